"""Validation of a parsed COCO file: every problem named by the file and the entry, before any work.

`validate(data, source)` is the one validation that check-coco, split, EDA and training share
(through `segkit.coco.load_coco` / `check_coco`). It returns (problems, warnings); a problem
makes the file unusable, a warning is worth knowing. What it checks (README, "Bad input"):

- types: ids are integers (not booleans), width/height positive integers of sane size,
  `file_name` a non-empty string inside the data root (no absolute path, no `..`) unless
  `allow_outside_root`, names non-empty strings;
- categories: unique ids >= 0 (id 0 only for "Background"), unique names, names the trash
  class table spells differently ("paper", "background") refused, and a file that mostly uses
  trash class names but adds others refused (it would silently build another class table);
- polygons: flat lists of >= 6 finite numbers within the image (2 px of overshoot warns);
- RLE: `size` equal to the image's, counts decoded and checked: only pycocotools' characters,
  not truncated, no negative run, runs adding up to height x width;
- `bbox` (4 finite numbers, no negative size), `area` (finite, >= 0), `iscrowd` (0 or 1).

Numbers are checked in bulk (one numpy pass over all polygon coordinates and one over all RLE
strings), so a 3,300-image file validates in a fraction of a second.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath

import numpy as np

from segkit.classes import TRASH, ClassTable
from segkit.rle import rle_string_problems

# A polygon point farther outside the image than this (pixels) is an error; nearer is clipped
# by the rasteriser and counted as a warning (annotation tools often overshoot by a pixel).
OFF_IMAGE_TOLERANCE = 2.0
MAX_IMAGE_SIDE = 32768            # larger widths/heights are typos (a label map would not fit)
MAX_IMAGE_PIXELS = 1 << 28        # 268 M pixels
_NUMBER_TYPES = {int, float}


_ID_LIMIT = 1 << 63


def _is_int(v) -> bool:
    return type(v) is int  # JSON integers; bool is not one


def _is_id(v) -> bool:
    """An id: an integer that fits 64 bits (pandas, numpy and pycocotools store ids so)."""
    return type(v) is int and -_ID_LIMIT <= v < _ID_LIMIT


def _show(v, limit: int = 40) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _floats(values: list) -> np.ndarray | None:
    """`values` as float64, or None when one is not an int or float (booleans are not numbers)
    or is an integer too large for a float."""
    if not set(map(type, values)) <= _NUMBER_TYPES:
        return None
    try:
        return np.array(values, np.float64)
    except OverflowError:
        return None


def _fmt(x: float) -> str:
    return f"{x:.1f}" if abs(x) < 1e6 else f"{x:.3g}"


# ---------------------------------------------------------------------------------------------
# The whole file
# ---------------------------------------------------------------------------------------------

def validate(data: object, source: str, *, allow_outside_root: bool = False,
             classes: ClassTable | None = None, require_annotations: bool = False
             ) -> tuple[list[str], list[str]]:
    """Every problem and warning in a parsed COCO dict, each naming `source` and the entry.

    `classes`: the expected class table (every category name must be one of its names);
    without it, names close to the trash table's are checked. `require_annotations`: a file
    for training must have a non-empty 'annotations' list.
    """
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
    if require_annotations and not data.get("annotations"):
        what = "no 'annotations' key" if "annotations" not in data else "an empty 'annotations' list"
        problems.append(f"{source}: {what}: a file to train on needs annotations (every pixel "
                        "would be Background)")
    categories = _check_categories(data["categories"], source, classes, problems)
    images = _check_images(data["images"], source, allow_outside_root, problems)
    _check_annotations(data.get("annotations", []), images, categories, source, problems,
                       warnings)
    return problems, warnings


# ---------------------------------------------------------------------------------------------
# Categories
# ---------------------------------------------------------------------------------------------

def _fold(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def _check_categories(cats: list, source: str, classes: ClassTable | None,
                      problems: list) -> dict:
    """Category id -> name of the well-formed categories."""
    by_id: dict[int, str] = {}
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            problems.append(f"{source}: categories[{i}] needs 'id' and 'name'")
            continue
        cid, name = cat["id"], cat["name"]
        if not _is_id(cid) or cid < 0:
            problems.append(f"{source}: categories[{i}] has id {_show(cid)}: category ids are "
                            "non-negative integers")
        elif not isinstance(name, str) or not name.strip():
            problems.append(f"{source}: category {cid} has name {_show(name)}: names are "
                            "non-empty strings")
        elif cid in by_id:
            problems.append(f"{source}: duplicate category id {cid}")
        else:
            by_id[cid] = name
    names = list(by_id.values())
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{source}: category name {name!r} used by more than one id")
    problems.extend(category_name_problems(by_id, source, classes))
    return by_id


def category_name_problems(names_by_id: dict, source: str,
                           classes: ClassTable | None = None) -> list[str]:
    """Names that would silently change the class table.

    With `classes`, every name must be one of its names. Without, the trash table is the
    reference: a name it spells differently ("paper", "background") is refused, and so is a
    file that uses at least half of the trash classes but adds names of its own (a typo or a
    stray class would otherwise make segkit build the file's own class table). Files with
    their own classes (CamVid, TACO) share at most a few names with it and pass.
    """
    problems = []
    names = set(names_by_id.values())
    if classes is not None:
        unknown = sorted(names - set(classes.names))
        if unknown:
            problems.append(f"{source}: categories {unknown} are not in the class table "
                            f"({', '.join(classes.names)})")
        return problems
    spelled = {_fold(n): n for n in TRASH.names}
    for cid, name in sorted(names_by_id.items()):
        exact = spelled.get(_fold(name))
        if exact is not None and exact != name:
            problems.append(f"{source}: category {cid} is named {name!r}, the class table's "
                            f"{exact!r} spelled differently (names match exactly)")
    trash = set(TRASH.names[1:])
    unknown = sorted(n for n in names - set(TRASH.names) if _fold(n) not in spelled)
    if unknown and 2 * len(names & trash) >= len(trash):
        problems.append(f"{source}: categories {unknown} are not trash classes although "
                        f"{len(names & trash)} of the file's categories are: the class table "
                        "would silently become the file's own. Rename them to trash classes, "
                        "or pass the class table they belong to (classes=...)")
    return problems


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

def file_name_problem(name: object, allow_outside_root: bool = False) -> str | None:
    """Why `name` cannot be an image's file_name (relative to the data root), or None."""
    if not isinstance(name, str) or not name:
        return f"file_name must be a non-empty string, got {_show(name)}"
    if any(ch in name for ch in "\0\r\n"):
        return f"file_name {_show(name)} holds a control character"
    if allow_outside_root:
        return None
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive or name[0] == "\\":
        return (f"file_name {_show(name)} is an absolute path: images must lie under the data "
                "root (allow_outside_root=True, or --allow-outside-root, accepts it)")
    if ".." in re.split(r"[\\/]", name):
        return (f"file_name {_show(name)} leads out of the data root ('..'; "
                "allow_outside_root=True, or --allow-outside-root, accepts it)")
    return None


def _check_images(images: list, source: str, allow_outside_root: bool,
                  problems: list) -> dict:
    """Image id -> (height, width) of images with a valid id; None where the size is bad."""
    table: dict[int, tuple[int, int] | None] = {}
    file_names: dict[str, int] = {}
    for i, img in enumerate(images):
        if not isinstance(img, dict):
            problems.append(f"{source}: images[{i}] must be an object, got {type(img).__name__}")
            continue
        missing = [k for k in ("id", "file_name", "width", "height") if k not in img]
        iid = img.get("id")
        ident = iid if _is_id(iid) else f"at index {i}"
        if missing:
            problems.append(f"{source}: image {ident} is missing {', '.join(missing)}")
            continue
        if not _is_id(iid):
            problems.append(f"{source}: images[{i}] has id {_show(iid)}: image ids are "
                            "(64-bit) integers")
            continue
        if iid in table:
            problems.append(f"{source}: duplicate image id {iid}")
            continue
        w, h = img["width"], img["height"]
        table[iid] = None
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            problems.append(f"{source}: image {iid} has width/height {_show(w, 20)}x"
                            f"{_show(h, 20)}, not positive integers")
        elif max(w, h) > MAX_IMAGE_SIDE or w * h > MAX_IMAGE_PIXELS:
            problems.append(f"{source}: image {iid} has width/height {_show(w, 20)}x"
                            f"{_show(h, 20)}: larger than "
                            f"{MAX_IMAGE_SIDE} px a side or {MAX_IMAGE_PIXELS} pixels")
        else:
            table[iid] = (int(h), int(w))
        problem = file_name_problem(img["file_name"], allow_outside_root)
        if problem:
            problems.append(f"{source}: image {iid}: {problem}")
        elif img["file_name"] in file_names:
            problems.append(f"{source}: image {iid} has the file_name {img['file_name']!r} of "
                            f"image {file_names[img['file_name']]}")
        else:
            file_names[img["file_name"]] = iid
    return table


# ---------------------------------------------------------------------------------------------
# Annotations
# ---------------------------------------------------------------------------------------------

def _check_annotations(anns: list, images: dict, categories: dict, source: str,
                       problems: list, warnings: list) -> None:
    seen: set[int] = set()
    polygons, rles, extras = _Polygons(source), _Rles(source), _Extras(source)
    for i, ann in enumerate(anns):
        if type(ann) is not dict:
            problems.append(f"{source}: annotations[{i}] must be an object, got "
                            f"{type(ann).__name__}")
            continue
        aid = ann.get("id")
        if not ("id" in ann and "image_id" in ann and "category_id" in ann
                and "segmentation" in ann):
            missing = [k for k in ("id", "image_id", "category_id", "segmentation")
                       if k not in ann]
            ident = aid if _is_id(aid) else f"at index {i}"
            problems.append(f"{source}: annotation {ident} is missing {', '.join(missing)}")
            continue
        if not _is_id(aid):
            problems.append(f"{source}: annotations[{i}] has id {_show(aid)}: annotation ids "
                            "are (64-bit) integers")
            continue
        if aid in seen:
            problems.append(f"{source}: duplicate annotation id {aid}")
            continue
        seen.add(aid)
        cid, iid = ann["category_id"], ann["image_id"]
        if not _is_id(cid) or cid not in categories:
            problems.append(f"{source}: annotation {aid} has unknown category_id {_show(cid)}")
        if not _is_id(iid) or iid not in images:
            problems.append(f"{source}: annotation {aid} points at unknown image_id {_show(iid)}")
            continue
        size = images[iid]
        if size is None:
            continue  # the image's own problem is reported
        ref = (aid, iid)
        extras.add(ann, size, ref, problems)
        seg = ann["segmentation"]
        if type(seg) is dict:
            rles.add(seg, size, ref, problems)
        elif type(seg) is list and seg:
            polygons.add(seg, size, ref, problems)
        else:
            problems.append(f"{_where(source, ref)}: segmentation must be polygons (a list of "
                            "lists) or an RLE dict")
    polygons.check(problems, warnings)
    rles.check(problems)
    extras.check(problems, warnings)


def _where(source: str, ref: tuple[int, int]) -> str:
    return f"{source}: annotation {ref[0]} (image {ref[1]})"


class _Batch:
    """Entries collected from every annotation and checked in one numpy pass; problems name
    the annotation (`ref`: annotation id, image id)."""

    def __init__(self, source: str):
        self.source = source

    def where(self, ref: tuple[int, int]) -> str:
        return _where(self.source, ref)


class _Polygons(_Batch):
    def __init__(self, source: str):
        super().__init__(source)
        self.values: list = []
        self.lengths: list[int] = []
        self.info: list[tuple[tuple, int, int, int]] = []  # ref, polygon index, h, w

    def add(self, seg: list, size: tuple[int, int], ref: tuple, problems: list) -> None:
        for k, poly in enumerate(seg):
            n = len(poly) if type(poly) is list else -1
            if n >= 6 and not n % 2:
                self.values.extend(poly)
                self.lengths.append(n)
                self.info.append((ref, k, *size))
            elif n < 0:
                problems.append(f"{self.where(ref)}: polygon {k} is not a flat list of numbers")
            elif n % 2:
                problems.append(f"{self.where(ref)}: polygon {k} has an odd number of "
                                f"coordinates ({n})")
            else:
                problems.append(f"{self.where(ref)}: polygon {k} has {n // 2} points; 3 are "
                                "needed")

    def _numbers(self, problems: list) -> np.ndarray:
        """All coordinates as float64; polygons holding something else are reported and
        dropped (the slow path, only for a file with such a polygon)."""
        array = _floats(self.values)
        if array is not None:
            return array
        keep, values, start = [], [], 0
        for n, info in zip(self.lengths, self.info, strict=True):
            poly = self.values[start: start + n]
            start += n
            if _floats(poly) is None:
                bad = next((v for v in poly if type(v) not in _NUMBER_TYPES), None)
                what = f" ({_show(bad)})" if bad is not None else " (an integer too large)"
                problems.append(f"{self.where(info[0])}: polygon {info[1]} is not a flat list "
                                f"of numbers{what}")
            else:
                keep.append((n, info))
                values.extend(poly)
        self.lengths = [n for n, _ in keep]
        self.info = [i for _, i in keep]
        return np.array(values, np.float64)

    def check(self, problems: list, warnings: list) -> None:
        if not self.lengths:
            return
        coords = self._numbers(problems)
        if not self.lengths:
            return
        lengths = np.asarray(self.lengths)
        starts = np.cumsum(lengths) - lengths
        bad = np.logical_or.reduceat(~np.isfinite(coords), starts)
        half_starts = starts // 2
        xs, ys = coords[0::2], coords[1::2]
        size = np.array([(h, w) for _, _, h, w in self.info], np.float64)
        with np.errstate(invalid="ignore"):
            over = np.maximum.reduce([-np.minimum.reduceat(xs, half_starts),
                                      np.maximum.reduceat(xs, half_starts) - size[:, 1],
                                      -np.minimum.reduceat(ys, half_starts),
                                      np.maximum.reduceat(ys, half_starts) - size[:, 0]])
        for j in np.flatnonzero(bad | (over > 0)):
            ref, k, h, w = self.info[j]
            if bad[j]:
                poly = coords[starts[j]: starts[j] + lengths[j]]
                value = poly[~np.isfinite(poly)][0]
                problems.append(f"{self.where(ref)}: polygon {k} holds a non-finite "
                                f"coordinate ({value})")
            elif over[j] > OFF_IMAGE_TOLERANCE:
                problems.append(f"{self.where(ref)}: polygon {k} reaches {_fmt(over[j])}px "
                                f"outside the {w}x{h} image")
            else:
                warnings.append(f"{self.where(ref)}: polygon {k} is {over[j]:.1f}px off the "
                                "image (clipped)")


class _Rles(_Batch):
    """Sizes and uncompressed counts are checked as they come, compressed strings decoded
    together in `check`."""

    def __init__(self, source: str):
        super().__init__(source)
        self.strings: list[bytes] = []
        self.info: list[tuple[tuple, int]] = []  # ref, h * w

    def add(self, seg: dict, size: tuple[int, int], ref: tuple, problems: list) -> None:
        h, w = size
        rle_size, counts = seg.get("size"), seg.get("counts")
        if not (type(rle_size) is list and len(rle_size) == 2
                and type(rle_size[0]) is int and type(rle_size[1]) is int):
            problems.append(f"{self.where(ref)}: RLE without a [height, width] 'size'")
        elif rle_size[0] != h or rle_size[1] != w:
            problems.append(f"{self.where(ref)}: RLE size {rle_size} disagrees with the "
                            f"image's [{h}, {w}]")
        elif type(counts) is str:
            if not counts.isascii():
                problems.append(f"{self.where(ref)}: compressed RLE counts hold a non-ASCII "
                                "character (corrupted)")
            else:
                self.strings.append(counts.encode())
                self.info.append((ref, h * w))
        elif type(counts) is list:
            problem = _uncompressed_problem(counts, h, w)
            if problem:
                problems.append(f"{self.where(ref)}: {problem}")
        else:
            problems.append(f"{self.where(ref)}: RLE 'counts' must be a string or a list of "
                            f"integers, got {type(counts).__name__}")

    def check(self, problems: list) -> None:
        found = rle_string_problems(self.strings, [n for _, n in self.info])
        for j, problem in sorted(found.items()):
            problems.append(f"{self.where(self.info[j][0])}: {problem}")


def _uncompressed_problem(counts: list, h: int, w: int) -> str | None:
    if not counts:
        return "uncompressed RLE counts are empty"
    if not set(map(type, counts)) <= {int}:
        bad = next(v for v in counts if type(v) is not int)
        return f"uncompressed RLE counts must be integers, got {_show(bad)}"
    try:
        array = np.array(counts, np.int64)
    except OverflowError:
        return "uncompressed RLE counts hold an integer too large"
    if (array < 0).any():
        return f"uncompressed RLE counts hold a negative run ({int(array.min())})"
    total = int(array.sum())
    if total != h * w:
        return f"uncompressed RLE counts do not add up to {h}x{w} = {h * w} (they sum to {total})"
    return None


class _Extras(_Batch):
    """`area`, `bbox` and `iscrowd`: not used for the masks, but non-finite, negative or absurd
    values mean a broken export. Values beyond the image warn; absurd ones (beyond twice the
    image) are errors."""

    def __init__(self, source: str):
        super().__init__(source)
        self.areas: list = []
        self.boxes: list = []
        self.area_info: list[tuple[tuple, int, int]] = []
        self.box_info: list[tuple[tuple, int, int]] = []

    def add(self, ann: dict, size: tuple[int, int], ref: tuple, problems: list) -> None:
        crowd = ann.get("iscrowd", 0)
        if crowd != 0 and not (crowd == 1 and type(crowd) is int):
            problems.append(f"{self.where(ref)}: iscrowd must be 0 or 1, got {_show(crowd)}")
        if "area" in ann:
            self.areas.append(ann["area"])
            self.area_info.append((ref, *size))
        if "bbox" in ann:
            box = ann["bbox"]
            if type(box) is list and len(box) == 4:
                self.boxes.extend(box)
                self.box_info.append((ref, *size))
            else:
                problems.append(f"{self.where(ref)}: bbox must be [x, y, width, height], got "
                                f"{_show(box)}")

    def check(self, problems: list, warnings: list) -> None:
        areas = _floats(self.areas)
        if areas is None:  # slow path: find the entries that are not numbers
            areas = np.array([a if _floats([a]) is not None else np.nan for a in self.areas],
                             np.float64)
        pixels = np.array([h * w for _, h, w in self.area_info], np.float64)
        with np.errstate(invalid="ignore"):
            odd = ~(np.isfinite(areas) & (areas >= 0) & (areas <= pixels * 1.1))
        for j in np.flatnonzero(odd):
            where, a = self.where(self.area_info[j][0]), self.areas[j]
            if not np.isfinite(areas[j]) or areas[j] < 0 or areas[j] > 4 * pixels[j]:
                problems.append(f"{where}: area must be a finite number from 0 to about the "
                                f"image's {int(pixels[j])} pixels, got {_show(a)}")
            else:
                warnings.append(f"{where}: area {_fmt(areas[j])} exceeds the image's "
                                f"{int(pixels[j])} pixels")
        self._check_boxes(problems, warnings)

    def _check_boxes(self, problems: list, warnings: list) -> None:
        boxes = _floats(self.boxes)
        if boxes is None:
            boxes = np.array([b if _floats([b]) is not None else np.nan for b in self.boxes],
                             np.float64)
        boxes = boxes.reshape(-1, 4)
        size = np.array([(h, w) for _, h, w in self.box_info], np.float64).reshape(-1, 2)
        x0, y0, bw, bh = boxes.T
        with np.errstate(invalid="ignore", over="ignore"):
            over = np.maximum.reduce([-x0, -y0, x0 + bw - size[:, 1], y0 + bh - size[:, 0]])
            fine = np.isfinite(boxes).all(axis=1) & (bw >= 0) & (bh >= 0)
            flagged = np.flatnonzero(~fine | (over > OFF_IMAGE_TOLERANCE))
        for j in flagged:
            ref, h, w = self.box_info[j]
            where, shown = self.where(ref), _show(self.boxes[4 * j: 4 * j + 4])
            if not np.isfinite(boxes[j]).all():
                problems.append(f"{where}: bbox must be 4 finite numbers, got {shown}")
            elif bw[j] < 0 or bh[j] < 0:
                problems.append(f"{where}: bbox {shown} has a negative width or height")
            elif over[j] > max(h, w):
                problems.append(f"{where}: bbox {shown} lies far outside the {w}x{h} image")
            else:
                warnings.append(f"{where}: bbox {shown} reaches {_fmt(over[j])}px outside the "
                                f"{w}x{h} image")
