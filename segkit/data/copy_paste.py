"""More of the rare classes: paste their instances onto background-heavy training images.

Instances of the chosen classes (default Battery and Clothing) are cut out of the training
file's images (only their visible pixels, so nothing that covers them comes along), scaled,
rotated and maybe flipped, and pasted at a random spot *fully inside* a target image. Targets
are the training images with the highest background share, taken in that order (round robin
when more images are asked for than there are). Labels follow the picture: a pasted object
covers what lies under it, the covered parts of earlier annotations (and of objects pasted
before it) are cut away, annotations left with no pixel are dropped. Cut and pasted
annotations are stored as compressed COCO RLE; untouched ones keep their original polygons.

Output convention (what training needs to know): everything goes into one folder,
`outputs/copy_paste/<name>/`:

    annotations.json   COCO file listing only the generated images
    images/00000.jpg   the generated images; file_name in the JSON is "images/00000.jpg",
                       i.e. relative to the folder that holds annotations.json
    pasted.csv         one row per pasted object: new image, target image, source annotation,
                       class, scale, rotation, flip, pixels covered when pasted, and its
                       annotation id in annotations.json (-1: later pastes covered it all)

so training lists the pair (`<name>/annotations.json`, data root `<name>/`) beside the fold
file and its own data root (`CopyPasteResult.coco_file` and `.data_root`). Image ids continue
after the largest id of the source file, annotation ids likewise. The source images and JSON
are only read; same inputs and seed give the same bytes; the folder appears complete or not
at all (it is built aside and renamed into place).

Example:
    train = load_coco("outputs/splits/fold0_train.json")
    result = copy_paste(train, "data", name="fold0", images_per_class={"Battery": 50,
                        "Clothing": 100}, seed=0)
    result.coco_file, result.data_root
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from segkit.coco.files import Coco, read_image, write_coco
from segkit.core.classes import BACKGROUND, ClassTable
from segkit.core.errors import ParameterError
from segkit.core.paths import atomic_folder, outputs_dir, write_bytes_atomic, write_text_atomic
from segkit.data.visible_masks import owner_map, visible_areas, visible_mask

DEFAULT_CLASSES = ("Battery", "Clothing")
MIN_INSTANCE_PIXELS = 16  # smaller visible remnants are slivers, not objects worth pasting
JPEG_QUALITY = 95
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class CopyPasteResult:
    """Where the generated data is: the COCO file and the folder its file names start from."""

    coco_file: Path
    data_root: Path
    pasted: pd.DataFrame


@dataclass(frozen=True)
class _Instance:
    annotation_id: int
    image_id: int
    class_name: str
    category_id: int


def _encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict:
    rle = _encode(mask)
    bbox = mask_utils.toBbox({**rle, "counts": rle["counts"].encode("ascii")})
    return {"id": ann_id, "image_id": image_id, "category_id": category_id,
            "segmentation": rle, "area": int(mask.sum()),
            "bbox": [float(v) for v in bbox], "iscrowd": 0}


def _check_parameters(classes, images_per_class, objects_per_image, scale_range,
                      rotation_range, seed, name, table: ClassTable) -> dict[str, int]:
    if isinstance(classes, str) or not isinstance(classes, Sequence) or not classes:
        raise ParameterError(f"classes must be a non-empty list of class names, got {classes!r}")
    for class_name in classes:
        _check_class_name(class_name, table)
    if len(set(classes)) != len(classes):
        raise ParameterError(f"classes lists a class twice: {list(classes)}")
    if isinstance(images_per_class, Mapping):
        extra = [c for c in images_per_class if c not in classes]
        if extra:
            raise ParameterError(f"images_per_class names {extra}, which are not in classes; "
                                 f"allowed: {', '.join(classes)}")
        counts = {c: images_per_class.get(c, 0) for c in classes}
    else:
        counts = {c: images_per_class for c in classes}
    for c, n in counts.items():
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ParameterError(f"images_per_class for {c!r} must be an integer >= 0, got {n!r}")
    if sum(counts.values()) == 0:
        raise ParameterError("images_per_class asks for no image at all")
    if not isinstance(objects_per_image, (int, np.integer)) or isinstance(objects_per_image,
                                                                           bool) \
            or objects_per_image < 1:
        raise ParameterError(f"objects_per_image must be an integer >= 1, got {objects_per_image!r}")
    try:
        lo, hi = (float(v) for v in scale_range)
    except (TypeError, ValueError):
        raise ParameterError(f"scale_range must be (low, high), got {scale_range!r}") from None
    if not 0 < lo <= hi:
        raise ParameterError(f"scale_range must satisfy 0 < low <= high, got {scale_range!r}")
    try:
        lo, hi = (float(v) for v in rotation_range)
    except (TypeError, ValueError):
        raise ParameterError(f"rotation_range must be (low, high) in degrees, "
                             f"got {rotation_range!r}") from None
    if not -180 <= lo <= hi <= 180:
        raise ParameterError(f"rotation_range must satisfy -180 <= low <= high <= 180 (degrees), "
                             f"got {rotation_range!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ParameterError(f"name must be a plain folder name (letters, digits, _ . -), "
                             f"got {name!r}")
    return {c: int(n) for c, n in counts.items()}


def _check_class_name(name, table: ClassTable) -> None:
    if name == BACKGROUND or name not in table.names:
        pastable = [n for n in table.names if n != BACKGROUND]
        raise ParameterError(f"unknown class {name!r} in classes; allowed: {', '.join(pastable)}")


def instance_pool(coco: Coco, class_names: Sequence[str], classes: ClassTable | None = None
                  ) -> dict[str, list[_Instance]]:
    """Instances of each class that show at least MIN_INSTANCE_PIXELS visible pixels.

    Unknown or Background names, and classes with no such instance, raise a ParameterError
    listing the allowed names."""
    classes = classes or ClassTable.for_coco(coco.categories)
    for name in class_names:
        _check_class_name(name, classes)
    category_of = {c["name"]: c["id"] for c in coco.categories}
    wanted = {category_of[n]: n for n in class_names if n in category_of}
    pool: dict[str, list[_Instance]] = {n: [] for n in class_names}
    for image in coco.images:
        anns = coco.annotations_by_image[image["id"]]
        if not any(a["category_id"] in wanted for a in anns):
            continue
        for ann, shown in zip(anns, visible_areas(anns, image["height"], image["width"])):
            if ann["category_id"] in wanted and shown >= MIN_INSTANCE_PIXELS:
                name = wanted[ann["category_id"]]
                pool[name].append(_Instance(ann["id"], image["id"], name, ann["category_id"]))
    empty = [n for n, instances in pool.items() if not instances]
    if empty:
        annotated = {a["category_id"] for a in coco.annotations}
        allowed = [c["name"] for c in sorted(coco.categories, key=lambda c: c["id"])
                   if c["id"] in annotated and c["name"] not in empty]
        raise ParameterError(
            f"no instance of {', '.join(map(repr, empty))} (with >= {MIN_INSTANCE_PIXELS} "
            f"visible pixels) to paste in {coco.path}; classes with annotations there: "
            f"{', '.join(allowed) or 'none'}")
    return pool


def _transform(rgb: np.ndarray, mask: np.ndarray, scale: float, angle: float, flip: bool,
               max_h: int, max_w: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Flip, scale and rotate a cut-out; shrink it further if it would not fit the target."""
    if flip:
        rgb, mask = rgb[:, ::-1], mask[:, ::-1]
    h, w = mask.shape
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    for _ in range(2):  # a second pass only when the first result is larger than the target
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        moved = corners @ matrix[:, :2].T + matrix[:, 2]
        lo, hi = moved.min(0), moved.max(0)
        out_w, out_h = int(np.ceil(hi[0] - lo[0])), int(np.ceil(hi[1] - lo[1]))
        if out_w <= max_w and out_h <= max_h:
            break
        scale *= min(max_w / out_w, max_h / out_h) * 0.98
    out_w, out_h = max(1, min(out_w, max_w)), max(1, min(out_h, max_h))
    matrix[:, 2] -= lo
    rgb_out = cv2.warpAffine(np.ascontiguousarray(rgb), matrix, (out_w, out_h),
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask_out = cv2.warpAffine(np.ascontiguousarray(mask).astype(np.uint8), matrix,
                              (out_w, out_h), flags=cv2.INTER_NEAREST, borderValue=0)
    return rgb_out, mask_out.astype(bool), scale


def copy_paste(coco: Coco, data_root: str | os.PathLike, name: str = "default",
               classes: Sequence[str] = DEFAULT_CLASSES,
               images_per_class: int | Mapping[str, int] = 10, objects_per_image: int = 2,
               scale_range: tuple[float, float] = (0.75, 1.25),
               rotation_range: tuple[float, float] = (-30.0, 30.0), seed: int = 0,
               out_root: str | os.PathLike | None = None) -> CopyPasteResult:
    """Generate images with pasted rare-class instances into `<out_root>/<name>/`.

    `coco` is the training file (e.g. a fold's train file) whose images live under
    `data_root`; `images_per_class` is one number for every class or a {class: count} dict;
    each new image gets `objects_per_image` instances of its class. `out_root` defaults to
    `outputs/copy_paste`. Every parameter is checked before anything is written.

    Example:
        result = copy_paste(train, "data", classes=["Clothing"], images_per_class=100)
    """
    from segkit.coco.pixels import pixel_counts
    from segkit.data.eda import background_share

    table = ClassTable.for_coco(coco.categories)
    counts = _check_parameters(classes, images_per_class, objects_per_image, scale_range,
                               rotation_range, seed, name, table)
    if not coco.images:
        raise ParameterError(f"{coco.path} has no images to paste onto")
    pool = instance_pool(coco, list(classes), table)
    targets = background_share(pixel_counts(coco, table)).index.tolist()
    out_root = Path(out_root) if out_root is not None else outputs_dir() / "copy_paste"
    final = out_root / name

    with atomic_folder(final) as staging:
        document, pasted = _generate(coco, Path(data_root), counts, pool, targets,
                                     objects_per_image, scale_range, rotation_range, seed,
                                     staging)
        write_coco(document, staging / "annotations.json")
        write_text_atomic(staging / "pasted.csv", pasted.to_csv(index=False, lineterminator="\n",
                                                                float_format="%.6g"))
    return CopyPasteResult(final / "annotations.json", final, pasted)


class _Cutouts:
    """Each instance's visible pixels (RGB) and mask, cut to their box, read once."""

    def __init__(self, coco: Coco, data_root: Path):
        self.coco = coco
        self.data_root = data_root
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, instance: _Instance) -> tuple[np.ndarray, np.ndarray]:
        if instance.annotation_id not in self._cache:
            info = self.coco.image_by_id[instance.image_id]
            anns = self.coco.annotations_by_image[instance.image_id]
            k = next(i for i, a in enumerate(anns) if a["id"] == instance.annotation_id)
            visible = visible_mask(anns, k, info["height"], info["width"])
            ys, xs = np.nonzero(visible)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            rgb = read_image(self.data_root, info)[y0:y1, x0:x1].copy()
            self._cache[instance.annotation_id] = (rgb, visible[y0:y1, x0:x1].copy())
        return self._cache[instance.annotation_id]


def _generate(coco, data_root, counts, pool, targets, objects_per_image, scale_range,
              rotation_range, seed, folder):
    """Make every image into `folder/images/`; return the COCO document and the pasted log.
    Image `job` draws from its own generator, seeded by (seed, job)."""
    images_out, annotations_out, log = [], [], []
    next_image_id = max(img["id"] for img in coco.images) + 1
    next_ann_id = max((a["id"] for a in coco.annotations), default=-1) + 1
    cutout = _Cutouts(coco, data_root)
    annotation_by_id = {a["id"]: a for a in coco.annotations}
    (folder / "images").mkdir(parents=True, exist_ok=True)

    job = 0
    for class_name, n_images in counts.items():
        for _ in range(n_images):
            rng = np.random.default_rng([seed, job])
            target = coco.image_by_id[targets[job % len(targets)]]
            h, w = target["height"], target["width"]
            picture = read_image(data_root, target).copy()
            new_id = next_image_id + job
            file_name = f"images/{job:05d}.jpg"
            anns = coco.annotations_by_image[target["id"]]
            # owner: which annotation shows at each pixel; pasted objects get ids n, n+1, ...
            owner, full_masks = owner_map(anns, h, w)
            modified, pasted_objects = _paste(
                picture, owner, full_masks, len(anns), pool[class_name], cutout, rng,
                objects_per_image, scale_range, rotation_range, log,
                [new_id, file_name, class_name, target["id"]])
            next_ann_id = _label(anns, modified, owner, pasted_objects, annotation_by_id,
                                 new_id, next_ann_id, annotations_out, log)
            _write_jpeg(folder, file_name, picture)
            images_out.append({"id": new_id, "file_name": file_name, "height": h, "width": w})
            job += 1
    extra = {k: v for k, v in coco.extra.items() if k in ("info", "licenses")}
    document = {**extra, "images": images_out, "annotations": annotations_out,
                "categories": coco.categories}
    pasted = pd.DataFrame(log, columns=["image_id", "file_name", "class", "target_image_id",
                                        "source_annotation_id", "source_image_id", "scale",
                                        "rotation", "flip", "pixels", "annotation_id"])
    return document, pasted


def _paste(picture, owner, full_masks, n, instances, cutout, rng, objects_per_image,
           scale_range, rotation_range, log, log_head):
    """Paste `objects_per_image` random `instances` onto `picture` and into `owner` (ids n,
    n+1, ...), in place, logging each (`log_head`: new image id, file name, class, target id).
    Returns which of the n annotations an object touched (cut: their segmentation becomes
    `owner == k`) and the pasted objects as (owner id, category id, log row)."""
    h, w = owner.shape
    modified = np.zeros(n, bool)
    pasted_objects = []
    for _ in range(objects_per_image):
        instance = instances[int(rng.integers(len(instances)))]
        rgb, mask = cutout(instance)
        scale = float(rng.uniform(*scale_range))
        angle = float(rng.uniform(*rotation_range))
        flip = bool(rng.random() < 0.5)
        rgb_t, mask_t, scale = _transform(rgb, mask, scale, angle, flip, h, w)
        y = int(rng.integers(0, h - mask_t.shape[0] + 1))
        x = int(rng.integers(0, w - mask_t.shape[1] + 1))
        if not mask_t.any():
            continue
        window = (slice(y, y + mask_t.shape[0]), slice(x, x + mask_t.shape[1]))
        picture[window][mask_t] = rgb_t[mask_t]
        # touched: an untouched annotation's full mask, or a cut one's visible part,
        # reaches under the new object
        under = np.zeros(n + len(pasted_objects) + 1, bool)
        shown = owner[window][mask_t]
        under[shown[shown >= 0]] = True
        modified |= full_masks[window][mask_t].any(axis=0) | under[:n]
        owner_id = n + len(pasted_objects)
        owner[window][mask_t] = owner_id
        pasted_objects.append((owner_id, instance.category_id, len(log)))
        log.append([*log_head, instance.annotation_id, instance.image_id, scale, angle, flip,
                    int(mask_t.sum()), -1])
    return modified, pasted_objects


def _label(anns, modified, owner, pasted_objects, annotation_by_id, new_id, next_ann_id,
           annotations_out, log) -> int:
    """Append the new image's annotations: untouched ones copied, cut and pasted ones from
    `owner` (dropped when fully covered; the log row gets the id). Returns the next id."""
    n = len(anns)
    regions = [(k, a["category_id"], None) for k, a in enumerate(anns)] + pasted_objects
    for k, category_id, log_row in regions:
        if k < n and not modified[k]:
            source = annotation_by_id[anns[k]["id"]]
            annotations_out.append({**source, "id": next_ann_id, "image_id": new_id})
        else:
            visible = owner == k
            if not visible.any():
                continue  # fully covered: dropped
            annotations_out.append(_annotation(next_ann_id, new_id, category_id, visible))
            if log_row is not None:
                log[log_row][-1] = next_ann_id
        next_ann_id += 1
    return next_ann_id


def _write_jpeg(folder: Path, file_name: str, picture: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"could not encode {file_name}")
    write_bytes_atomic(folder / file_name, buf.tobytes())


def class_counts(before: Coco, generated: Coco, classes: ClassTable) -> pd.DataFrame:
    """Annotations and pixels per class in the training file, in the generated file, and in
    both together (what training sees when it lists them side by side).

    Example:
        class_counts(train, load_coco(result.coco_file), TRASH)
    """
    from segkit.coco.pixels import pixel_counts

    def annotations(coco):
        mapping = classes.category_to_index(coco.categories, str(coco.path))
        found = np.bincount([mapping[a["category_id"]] for a in coco.annotations],
                            minlength=len(classes))
        return pd.Series(found[: len(classes)], index=list(classes.names))

    table = pd.DataFrame({"annotations_before": annotations(before),
                          "annotations_added": annotations(generated)})
    table["annotations_after"] = table["annotations_before"] + table["annotations_added"]
    pixels_before = pixel_counts(before, classes).sum()
    pixels_after = pixels_before + pixel_counts(generated, classes).sum()
    table["pixel_share_before"] = pixels_before / pixels_before.sum()
    table["pixel_share_after"] = pixels_after / pixels_after.sum()
    table.index.name = "class"
    return table


