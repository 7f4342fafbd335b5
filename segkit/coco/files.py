"""COCO in, COCO out: load and validate annotation files, rasterise them to label maps, write subsets.

Every stage of segkit reads and writes COCO JSON plus image files. Label maps are painted
largest annotation first (a small object lying on a large one stays visible), decoded with
pycocotools and cached on disk keyed by the annotation file's content, so a second pass is a read.

Example:
    coco = load_coco("data/train_all.json")
    classes = ClassTable.for_coco(coco.categories)
    label = label_map(coco, coco.images[0], classes)
    paths = cached_label_maps(coco, classes)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from segkit.coco.checks import validate
from segkit.coco.rle import decode_rle_counts as _decode_counts
from segkit.core.classes import ClassTable
from segkit.core.errors import CocoError, ParameterError
from segkit.core.paths import atomic_path, make_folder, outputs_dir, write_text_atomic


@dataclass
class Coco:
    """A validated COCO file: its lists, where it came from, and what validation warned about."""

    path: Path
    images: list[dict]
    annotations: list[dict]
    categories: list[dict]
    extra: dict = field(default_factory=dict)  # info, licenses, ... carried through on write
    digest: str = ""  # sha1 of the file's bytes: the cache key of its label maps
    warnings: list[str] = field(default_factory=list)

    @cached_property
    def annotations_by_image(self) -> dict[int, list[dict]]:
        by_image: dict[int, list[dict]] = {img["id"]: [] for img in self.images}
        for ann in self.annotations:
            by_image[ann["image_id"]].append(ann)
        return by_image

    def check_image_ids(self, image_ids, source=None) -> None:
        """A ParameterError naming the first ids (at most 5) that are not images of this file
        (`source`: the file named in the message, default this one's path)."""
        unknown = [i for i in image_ids if i not in self.image_by_id]
        if unknown:
            raise ParameterError(f"image_ids {unknown[:5]} are not in {source or self.path}")

    @cached_property
    def image_by_id(self) -> dict[int, dict]:
        return {img["id"]: img for img in self.images}

    def to_dict(self) -> dict:
        return {**self.extra, "images": self.images, "annotations": self.annotations,
                "categories": self.categories}


def read_json(path: str | os.PathLike) -> tuple[object, bytes]:
    """Parse a JSON file, turning every way it can fail into a CocoError naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CocoError(f"{path}: file not found") from None
    except OSError as exc:
        raise CocoError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] == b"\x1f\x8b":
        raise CocoError(f"{path}: gzip-compressed, not JSON text (decompress it first)")
    try:
        return json.loads(raw), raw
    except RecursionError:
        raise CocoError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise CocoError(f"{path}: not valid JSON ({exc})") from None


def load_coco(path: str | os.PathLike, *, require_annotations: bool = False,
              allow_outside_root: bool = False, classes: ClassTable | None = None) -> Coco:
    """Load and validate a COCO file; the first problem raises a CocoError naming the file and id.

    Coordinates slightly off the image are clipped and counted in `Coco.warnings`.
    `require_annotations`: refuse a file without annotations (training needs them).
    `allow_outside_root`: accept file_name entries that are absolute or contain `..`.
    `classes`: the class table every category name must belong to.

    Example:
        train = load_coco("data/train.json", require_annotations=True)
    """
    path = Path(path)
    data, raw = read_json(path)
    problems, warnings = validate(data, str(path), allow_outside_root=allow_outside_root,
                                  classes=classes, require_annotations=require_annotations)
    if problems:
        more = f" (and {len(problems) - 1} more problems: run `python -m segkit check-coco`)" \
            if len(problems) > 1 else ""
        raise CocoError(problems[0] + more)
    extra = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    return Coco(path=path, images=data["images"], annotations=data.get("annotations", []),
                categories=data["categories"], extra=extra,
                digest=hashlib.sha1(raw).hexdigest(), warnings=warnings)


def check_same_categories(files: Iterable[str | os.PathLike | Coco]) -> list[dict]:
    """The categories shared by the files of one run (train, val, test), or a CocoError.

    Categories map to classes by name, and a class table is built from one file's categories
    in id order: files that differ in their names (or their order) would label the same class
    differently. Ids may differ only where the names keep their order. An explicit Background
    category is ignored (it is class 0 either way). Returns the first file's categories.

    Example:
        check_same_categories(["fold0_train.json", "fold0_val.json", "test.json"])
    """
    from segkit.core.classes import BACKGROUND

    reference = None
    for item in files:
        coco = item if isinstance(item, Coco) else load_coco(item)
        names = [c["name"] for c in sorted(coco.categories, key=lambda c: c["id"])
                 if c["name"] != BACKGROUND]
        if reference is None:
            reference = (coco, names)
            continue
        first, first_names = reference
        if names != first_names:
            missing = [n for n in first_names if n not in names]
            extra = [n for n in names if n not in first_names]
            detail = (f"missing {missing}" if missing else "") + \
                     ("; " if missing and extra else "") + (f"extra {extra}" if extra else "")
            raise CocoError(f"{coco.path}: categories differ from {first.path}'s "
                            f"({detail or 'same names in another id order'}): the files of one "
                            "run must share one class table")
    return reference[0].categories if reference else []


# ---------------------------------------------------------------------------------------------
# Rasterising
# ---------------------------------------------------------------------------------------------

def _compressed_rle(seg, h: int, w: int) -> bytes:
    """Any COCO segmentation as pycocotools' compressed RLE string."""
    if isinstance(seg, dict):
        counts = seg["counts"]
        if isinstance(counts, list):
            counts = mask_utils.frPyObjects(seg, h, w)["counts"]
        return counts.encode("ascii") if isinstance(counts, str) else counts
    rles = mask_utils.frPyObjects(seg, h, w)
    rle = rles[0] if len(rles) == 1 else mask_utils.merge(rles)
    return rle["counts"]


def rasterize(segmentations: list, class_indices: Iterable[int], height: int, width: int
              ) -> np.ndarray:
    """Paint segmentations (polygons or RLE) into an (H, W) uint8 label map, largest area first.

    Pixels no annotation covers are 0 (Background). Equal areas keep the given order.

    Example:
        >>> square = [[1, 1, 5, 1, 5, 5, 1, 5]]
        >>> int(rasterize([square], [3], 8, 8)[3, 3])
        3
    """
    classes = np.asarray(list(class_indices), np.int64)
    if len(segmentations) == 0:
        return np.zeros((height, width), np.uint8)
    counts, owner = _decode_counts([_compressed_rle(s, height, width) for s in segmentations])
    # Runs alternate background / foreground, starting with background (column-major pixels).
    run_end = np.cumsum(counts)
    run_start = run_end - counts
    first_of_owner = np.searchsorted(owner, owner, side="left")
    run_start -= run_start[first_of_owner]
    fg = (np.arange(len(counts)) - first_of_owner) % 2 == 1
    fg &= counts > 0
    starts, lengths, who = run_start[fg], counts[fg], owner[fg]

    area = np.bincount(who, weights=lengths, minlength=len(segmentations))
    paint_order = np.argsort(-area, kind="stable")
    rank = np.empty(len(segmentations), np.int32)
    rank[paint_order] = np.arange(1, len(segmentations) + 1, dtype=np.int32)

    # Each pixel takes the annotation painted last over it: the highest rank covering it.
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    pixels = np.repeat(starts - offsets, lengths) + np.arange(total)
    winner = np.zeros(height * width, np.int32)
    np.maximum.at(winner, pixels, np.repeat(rank[who], lengths))
    class_of_rank = np.concatenate(([0], classes[paint_order])).astype(np.uint8)
    return np.ascontiguousarray(class_of_rank[winner].reshape(width, height).T)


def label_map(coco: Coco, image: dict, classes: ClassTable) -> np.ndarray:
    """The label map of one image of `coco` (uint8, class indices of `classes`)."""
    mapping = classes.category_to_index(coco.categories, str(coco.path))
    anns = coco.annotations_by_image[image["id"]]
    return rasterize([a["segmentation"] for a in anns], [mapping[a["category_id"]] for a in anns],
                     image["height"], image["width"])


def cache_key(coco: Coco, classes: ClassTable) -> str:
    """Label maps depend on the file's bytes and on the class order; nothing else."""
    h = hashlib.sha1(coco.digest.encode())
    h.update("\0".join(classes.names).encode())
    return h.hexdigest()[:20]


def label_cache_dir(coco: Coco, classes: ClassTable, cache_root: str | os.PathLike | None = None
                    ) -> Path:
    root = Path(cache_root) if cache_root else outputs_dir() / "cache" / "labels"
    return root / cache_key(coco, classes)


def cached_label_maps(coco: Coco, classes: ClassTable,
                      cache_root: str | os.PathLike | None = None) -> dict[int, Path]:
    """PNG label maps of every image of `coco`, written once and then only read.

    Returns image id -> PNG path. The folder is keyed by the file's content and the class
    table, so an edited annotation file gets fresh label maps and an unchanged one never
    rasterises twice.
    """
    folder = label_cache_dir(coco, classes, cache_root)
    paths = {img["id"]: folder / f"{img['id']}.png" for img in coco.images}
    todo = [img for img in coco.images if not paths[img["id"]].exists()]
    if todo:
        make_folder(folder)
        write_text_atomic(folder / "source.txt", f"{coco.path.resolve()}\n{coco.digest}\n")
        for img in todo:
            write_png(paths[img["id"]], label_map(coco, img, classes))
    return paths


def write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError(f"could not encode {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def read_label(path: str | os.PathLike) -> np.ndarray:
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise CocoError(f"{path}: cannot read label map")
    return label


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

def image_path(data_root: str | os.PathLike, image: dict) -> Path:
    return Path(data_root) / image["file_name"]


def read_image(data_root: str | os.PathLike, image: dict) -> np.ndarray:
    """An image of a COCO file as (H, W, 3) RGB uint8; errors name the file and the image id."""
    path = image_path(data_root, image)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        what = "missing" if not path.exists() else "unreadable"
        raise CocoError(f"{path}: image file {what} (image id {image['id']})")
    if bgr.shape[:2] != (image["height"], image["width"]):
        raise CocoError(f"{path}: image is {bgr.shape[1]}x{bgr.shape[0]} but the JSON says "
                        f"{image['width']}x{image['height']} (image id {image['id']})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file as cv2 (and so mmcv) decodes it, reading the header and
    the last bytes only; an image whose end marker is missing is decoded fully to tell a
    truncated file from one with trailing data. Raises OSError for unreadable files."""
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        fmt = im.format
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotation: cv2 applies it
            width, height = height, width
        tail_ok = True
        if fmt in ("JPEG", "PNG"):
            with open(path, "rb") as f:
                f.seek(max(os.fstat(f.fileno()).st_size - 64, 0))
                tail = f.read()
            tail_ok = (tail.rstrip(b"\0").endswith(b"\xff\xd9") if fmt == "JPEG"
                       else b"IEND" in tail[-12:])
        if not tail_ok:
            im.load()  # raises OSError for a truncated file
    return width, height


def check_images(coco: Coco, data_root: str | os.PathLike) -> list[str]:
    """Problems with the image files of `coco`: missing, unreadable, truncated or of another
    size than the JSON says. Reads the file headers (and ends), not the pixels."""
    from PIL import Image

    problems = []
    for img in coco.images:
        path = image_path(data_root, img)
        try:
            size = _image_size(path)
        except FileNotFoundError:
            problems.append(f"{path}: image file missing (image id {img['id']})")
            continue
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            why = "truncated" if "truncated" in str(exc) else "unreadable"
            problems.append(f"{path}: image file {why} (image id {img['id']}): {exc}")
            continue
        if size != (img["width"], img["height"]):
            problems.append(f"{path}: image is {size[0]}x{size[1]} but {coco.path} says "
                            f"{img['width']}x{img['height']} (image id {img['id']})")
    return problems


def check_image_files(coco: Coco, data_root: str | os.PathLike, limit: int = 5) -> None:
    """Raise one CocoError listing the first `limit` images of `coco` that training could not
    read (missing, unreadable, truncated, or another size than the JSON's), before the first
    iteration rather than hours into a run.

    Example:
        check_image_files(load_coco("data/train.json"), "data")
    """
    problems = check_images(coco, data_root)
    if problems:
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        raise CocoError(f"{coco.path}: {len(problems)} of its {len(coco.images)} images cannot "
                        "be used:\n  " + "\n  ".join(problems[:limit]) + more)


def check_coco(path: str | os.PathLike, data_root: str | os.PathLike | None = None, *,
               allow_outside_root: bool = False, classes: ClassTable | None = None
               ) -> tuple[list[str], list[str]]:
    """Every problem and warning of an annotation file (and its images, given a data root).

    A file without an 'annotations' key is a warning here (a test file has none) and an error
    for training (`load_coco(..., require_annotations=True)`).
    """
    try:
        data, _ = read_json(path)
    except CocoError as exc:
        return [str(exc)], []
    problems, warnings = validate(data, str(path), allow_outside_root=allow_outside_root,
                                  classes=classes)
    if isinstance(data, dict) and "annotations" not in data:
        warnings.append(f"{path}: no 'annotations' key: fine for a test file, an error for "
                        "training")
    if not problems and data_root is not None:
        coco = Coco(Path(path), data["images"], data.get("annotations", []), data["categories"])
        problems += check_images(coco, data_root)
    return problems, warnings


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def subset(coco: Coco, image_ids: Iterable[int]) -> dict:
    """A COCO dict with only the given images (file order kept) and their annotations."""
    keep = set(image_ids)
    unknown = keep - coco.image_by_id.keys()
    if unknown:
        raise CocoError(f"{coco.path}: no image ids {sorted(unknown)[:5]}")
    return {**coco.extra,
            "images": [img for img in coco.images if img["id"] in keep],
            "annotations": [a for a in coco.annotations if a["image_id"] in keep],
            "categories": coco.categories}


def write_coco(data: dict | Coco, path: str | os.PathLike) -> Path:
    """Write a COCO dict atomically (compact, key order kept: same input, same bytes)."""
    if isinstance(data, Coco):
        data = data.to_dict()
    path = Path(path)
    write_text_atomic(path, json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    return path
