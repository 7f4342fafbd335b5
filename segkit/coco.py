"""COCO in, COCO out: load and validate annotation files, rasterise them to label maps, write subsets.

Every stage of segkit reads and writes COCO JSON plus image files. Label maps are painted
largest annotation first (a small object lying on a large one stays visible), decoded with
pycocotools and cached on disk keyed by the annotation file's content, so a second pass is a read.

Example:
    >>> coco = load_coco("data/train_all.json")                  # doctest: +SKIP
    >>> classes = ClassTable.for_coco(coco.categories)           # doctest: +SKIP
    >>> label = label_map(coco, coco.images[0], classes)         # doctest: +SKIP
    >>> paths = cached_label_maps(coco, classes)                 # doctest: +SKIP
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

from segkit.classes import ClassTable
from segkit.errors import CocoError
from segkit.paths import atomic_path, outputs_dir, write_text_atomic

# A polygon point farther outside the image than this (pixels) is an error; nearer is clipped
# by the rasteriser and counted as a warning (annotation tools often overshoot by a pixel).
OFF_IMAGE_TOLERANCE = 2.0


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
        raise CocoError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return json.loads(raw), raw
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CocoError(f"{path}: not valid JSON ({exc})") from None


def load_coco(path: str | os.PathLike) -> Coco:
    """Load and validate a COCO file; the first problem raises a CocoError naming the file and id.

    Coordinates slightly off the image are clipped and counted in `Coco.warnings`.
    """
    path = Path(path)
    data, raw = read_json(path)
    problems, warnings = validate(data, str(path))
    if problems:
        more = f" (and {len(problems) - 1} more problems: run `python -m segkit check-coco`)" \
            if len(problems) > 1 else ""
        raise CocoError(problems[0] + more)
    extra = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    return Coco(path=path, images=data["images"], annotations=data.get("annotations", []),
                categories=data["categories"], extra=extra,
                digest=hashlib.sha1(raw).hexdigest(), warnings=warnings)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(data: object, source: str) -> tuple[list[str], list[str]]:
    """Every problem and warning in a parsed COCO dict, each naming `source` and the entry."""
    problems: list[str] = []
    warnings: list[str] = []
    if not isinstance(data, dict):
        return [f"{source}: top level must be a JSON object, got {type(data).__name__}"], []
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            problems.append(f"{source}: missing key {key!r} (a list)")
    if "annotations" in data and not isinstance(data["annotations"], list):
        problems.append(f"{source}: 'annotations' must be a list")
    if problems:
        return problems, warnings

    categories = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            problems.append(f"{source}: categories[{i}] needs 'id' and 'name'")
        elif cat["id"] in categories:
            problems.append(f"{source}: duplicate category id {cat['id']}")
        else:
            categories[cat["id"]] = cat["name"]
    names = list(categories.values())
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{source}: category name {name!r} used by more than one id")

    images = {}
    for i, img in enumerate(data["images"]):
        missing = [k for k in ("id", "file_name", "width", "height")
                   if not isinstance(img, dict) or k not in img]
        if missing:
            ident = img.get("id", f"at index {i}") if isinstance(img, dict) else f"at index {i}"
            problems.append(f"{source}: image {ident} is missing {', '.join(missing)}")
        elif img["id"] in images:
            problems.append(f"{source}: duplicate image id {img['id']}")
        elif not (isinstance(img["width"], int) and isinstance(img["height"], int)
                  and img["width"] > 0 and img["height"] > 0):
            problems.append(f"{source}: image {img['id']} has width/height "
                            f"{img['width']!r}x{img['height']!r}, not positive integers")
        else:
            images[img["id"]] = img

    seen_ann_ids = set()
    for i, ann in enumerate(data.get("annotations", [])):
        missing = [k for k in ("id", "image_id", "category_id", "segmentation")
                   if not isinstance(ann, dict) or k not in ann]
        if missing:
            ident = ann.get("id", f"at index {i}") if isinstance(ann, dict) else f"at index {i}"
            problems.append(f"{source}: annotation {ident} is missing {', '.join(missing)}")
            continue
        aid = ann["id"]
        if aid in seen_ann_ids:
            problems.append(f"{source}: duplicate annotation id {aid}")
            continue
        seen_ann_ids.add(aid)
        if ann["category_id"] not in categories:
            problems.append(f"{source}: annotation {aid} has unknown category_id {ann['category_id']}")
        img = images.get(ann["image_id"])
        if img is None:
            problems.append(f"{source}: annotation {aid} points at unknown image_id {ann['image_id']}")
            continue
        _check_segmentation(ann["segmentation"], img, f"{source}: annotation {aid} "
                            f"(image {img['id']})", problems, warnings)
    return problems, warnings


def _check_segmentation(seg, img: dict, where: str, problems: list, warnings: list) -> None:
    h, w = img["height"], img["width"]
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2):
            problems.append(f"{where}: RLE without a [height, width] 'size'")
        elif list(size) != [h, w]:
            problems.append(f"{where}: RLE size {size} disagrees with the image's [{h}, {w}]")
        elif isinstance(counts, list):
            if sum(counts) != h * w or any(not isinstance(c, int) or c < 0 for c in counts):
                problems.append(f"{where}: uncompressed RLE counts do not add up to {h}x{w}")
        elif not isinstance(counts, str):
            problems.append(f"{where}: RLE 'counts' must be a string or a list of integers")
        return
    if not isinstance(seg, list) or not seg:
        problems.append(f"{where}: segmentation must be polygons (a list of lists) or an RLE dict")
        return
    for k, poly in enumerate(seg):
        if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
            problems.append(f"{where}: polygon {k} is not a flat list of numbers")
        elif len(poly) % 2:
            problems.append(f"{where}: polygon {k} has an odd number of coordinates ({len(poly)})")
        elif len(poly) < 6:
            problems.append(f"{where}: polygon {k} has {len(poly) // 2} points; 3 are needed")
        else:
            xs, ys = poly[0::2], poly[1::2]
            over = max(-min(xs), max(xs) - w, -min(ys), max(ys) - h)
            if over > OFF_IMAGE_TOLERANCE:
                problems.append(f"{where}: polygon {k} reaches {over:.1f}px outside the "
                                f"{w}x{h} image")
            elif over > 0:
                warnings.append(f"{where}: polygon {k} is {over:.1f}px off the image (clipped)")


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


def _decode_counts(strings: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of many compressed RLE strings at once, and which string each belongs to.

    pycocotools packs each count in 5-bit chunks (bit 0x20: more chunks follow, bit 0x10 of the
    last chunk: negative) and stores counts from the fourth on as a delta to the count two
    before. Decoding all strings of an image in a few numpy passes is what makes rasterising
    fast: pycocotools' own decode writes a full HxW mask per annotation.
    """
    lengths = np.fromiter(map(len, strings), np.int64, len(strings))
    chars = np.frombuffer(b"".join(strings), np.uint8).astype(np.int64) - 48
    last = (chars & 0x20) == 0  # this char ends a number
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    number_of_char = np.cumsum(last) - last
    chunk = np.arange(len(chars)) - starts[number_of_char]
    values = np.add.reduceat((chars & 0x1F) << (5 * chunk), starts)
    negative = (chars[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * (chunk[ends][negative] + 1))

    numbers_per_string = np.diff(np.concatenate(([0], np.cumsum(last)[np.cumsum(lengths) - 1])))
    owner = np.repeat(np.arange(len(strings)), numbers_per_string)
    first = np.concatenate(([0], np.cumsum(numbers_per_string)[:-1]))
    j = np.arange(len(values)) - first[owner]
    counts = values.copy()
    for parity in (0, 1):  # delta chains: j = 2, 4, 6, ... and j = 1, 3, 5, ...
        idx = np.flatnonzero((j % 2 == parity) & (j >= 1))
        if not len(idx):
            continue
        running = np.cumsum(values[idx])
        chain_start = np.concatenate(([True], owner[idx][1:] != owner[idx][:-1]))
        base = np.maximum.accumulate(np.where(chain_start, np.arange(len(idx)), 0))
        counts[idx] = running - np.concatenate(([0], running))[base]
    return counts, owner


def rasterize(segmentations: list, class_indices: Iterable[int], height: int, width: int
              ) -> np.ndarray:
    """Paint segmentations (polygons or RLE) into an (H, W) uint8 label map, largest area first.

    Pixels no annotation covers are 0 (Background). Equal areas keep the given order.

    Example:
        >>> square = [[1, 1, 5, 1, 5, 5, 1, 5]]
        >>> rasterize([square], [3], 8, 8)[3, 3]
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
        folder.mkdir(parents=True, exist_ok=True)
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


def check_images(coco: Coco, data_root: str | os.PathLike) -> list[str]:
    """Problems with the image files of `coco`: missing, unreadable or of another size.
    Reads only the file headers."""
    from PIL import Image

    problems = []
    for img in coco.images:
        path = image_path(data_root, img)
        try:
            with Image.open(path) as im:
                size = im.size
        except FileNotFoundError:
            problems.append(f"{path}: image file missing (image id {img['id']})")
            continue
        except OSError:
            problems.append(f"{path}: image file unreadable (image id {img['id']})")
            continue
        if size != (img["width"], img["height"]):
            problems.append(f"{path}: image is {size[0]}x{size[1]} but {coco.path} says "
                            f"{img['width']}x{img['height']} (image id {img['id']})")
    return problems


def check_coco(path: str | os.PathLike, data_root: str | os.PathLike | None = None
               ) -> tuple[list[str], list[str]]:
    """Every problem and warning of an annotation file (and its images, given a data root)."""
    try:
        data, _ = read_json(path)
    except CocoError as exc:
        return [str(exc)], []
    problems, warnings = validate(data, str(path))
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
