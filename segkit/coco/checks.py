"""Validation of a parsed COCO file: every problem named by the file and the entry, before any work.

`validate(data, source)` is the one validation that check-coco, split, EDA and training share
(through `segkit.coco.files.load_coco` / `check_coco`). It returns (problems, warnings); a problem
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

Numbers are checked in bulk (`segkit.coco.annotation_checks`: one numpy pass over all polygon
coordinates and one over all RLE strings), so a 3,300-image file validates in a fraction of a
second.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath

from segkit.coco.annotation_checks import (
    ExtraChecks,
    PolygonChecks,
    RleChecks,
    annotation_where,
    show_value,
)
from segkit.core.classes import TRASH, ClassTable

MAX_IMAGE_SIDE = 32768            # larger widths/heights are typos (a label map would not fit)
MAX_IMAGE_PIXELS = 1 << 28        # 268 M pixels
_ID_LIMIT = 1 << 63
# The keys an entry must have, in the order a problem lists them (a keys view: `>=` is one
# set comparison per entry).
_IMAGE_KEYS = dict.fromkeys(("id", "file_name", "width", "height")).keys()
_ANNOTATION_KEYS = dict.fromkeys(("id", "image_id", "category_id", "segmentation")).keys()


def _is_int(v) -> bool:
    return type(v) is int  # JSON integers; bool is not one


def _is_id(v) -> bool:
    """An id: an integer that fits 64 bits (pandas, numpy and pycocotools store ids so)."""
    return type(v) is int and -_ID_LIMIT <= v < _ID_LIMIT


def _entry_problem(entry: dict, i: int, kind: str, keys, seen, source: str) -> str:
    """Why entry i of images / annotations (`kind`: "image" / "annotation") failed the quick
    check (all `keys` there, a 64-bit id not in `seen`): a missing key, an id that is not a
    64-bit integer, or an id already in `seen`."""
    eid = entry.get("id")
    missing = [k for k in keys if k not in entry]
    if missing:
        ident = eid if _is_id(eid) else f"at index {i}"
        return f"{source}: {kind} {ident} is missing {', '.join(missing)}"
    if not _is_id(eid):
        return (f"{source}: {kind}s[{i}] has id {show_value(eid)}: {kind} ids are (64-bit) "
                "integers")
    return f"{source}: duplicate {kind} id {eid}"


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
            problems.append(f"{source}: categories[{i}] has id {show_value(cid)}: category ids are "
                            "non-negative integers")
        elif not isinstance(name, str) or not name.strip():
            problems.append(f"{source}: category {cid} has name {show_value(name)}: names are "
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
        return f"file_name must be a non-empty string, got {show_value(name)}"
    if any(ch in name for ch in "\0\r\n"):
        return f"file_name {show_value(name)} holds a control character"
    if allow_outside_root:
        return None
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive or name[0] == "\\":
        return (f"file_name {show_value(name)} is an absolute path: images must lie under the data "
                "root (allow_outside_root=True, or --allow-outside-root, accepts it)")
    if ".." in re.split(r"[\\/]", name):
        return (f"file_name {show_value(name)} leads out of the data root ('..'; "
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
        iid = img.get("id")
        if not (img.keys() >= _IMAGE_KEYS and _is_id(iid) and iid not in table):
            problems.append(_entry_problem(img, i, "image", _IMAGE_KEYS, table, source))
            continue
        w, h = img["width"], img["height"]
        table[iid] = None
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            problems.append(f"{source}: image {iid} has width/height {show_value(w, 20)}x"
                            f"{show_value(h, 20)}, not positive integers")
        elif max(w, h) > MAX_IMAGE_SIDE or w * h > MAX_IMAGE_PIXELS:
            problems.append(f"{source}: image {iid} has width/height {show_value(w, 20)}x"
                            f"{show_value(h, 20)}: larger than "
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
    polygons, rles, extras = PolygonChecks(source), RleChecks(source), ExtraChecks(source)
    for i, ann in enumerate(anns):
        if type(ann) is not dict:
            problems.append(f"{source}: annotations[{i}] must be an object, got "
                            f"{type(ann).__name__}")
            continue
        aid = ann.get("id")
        if not (ann.keys() >= _ANNOTATION_KEYS and _is_id(aid) and aid not in seen):
            problems.append(_entry_problem(ann, i, "annotation", _ANNOTATION_KEYS, seen, source))
            continue
        seen.add(aid)
        cid, iid = ann["category_id"], ann["image_id"]
        if not _is_id(cid) or cid not in categories:
            problems.append(f"{source}: annotation {aid} has unknown category_id {show_value(cid)}")
        if not _is_id(iid) or iid not in images:
            problems.append(f"{source}: annotation {aid} points at unknown image_id {show_value(iid)}")
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
            polygons.add(seg, size, ref, problems, ann.get("area"))
        else:
            problems.append(f"{annotation_where(source, ref)}: segmentation must be polygons (a list of "
                            "lists) or an RLE dict")
    polygons.check(problems, warnings)
    rles.check(problems)
    extras.check(problems, warnings)
