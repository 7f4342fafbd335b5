r"""Image groups: the images that must land in the same fold.

A validation image with a near-twin in the training fold overstates the score (video frames,
several photos of one scene), so `segkit.folds.split` keeps each group's images in one fold and
`segkit.folds.checks` refuses fold files in which a group straddles train and val. `group_by`
has four spellings, all plain strings (a notebook or CLI parameter as is):

* `None` (or ""): each image is its own group (the default; same bytes as before groups existed).
* `"regex:PATTERN"`: the first capture group (or the whole match) of `re.search(PATTERN, name)`,
  where `name` is the image's base name (`0016E5_08190.png`) or, when PATTERN contains a `/`,
  the file name as the COCO file writes it (`batch_01_vt/0002.jpg`: `regex:^([^/]+)/` groups
  by folder). CamVid's sequences: `regex:^(\w+?)_` (0016E5, 0006R0, 0001TP).
* `"field:NAME"`: the value of the image entry's field NAME (e.g. `field:video_id`).
* `"frames:GAP"`: runs of consecutive frames. The frame number is the last number in the base
  name; images whose file names are equal apart from it form a sequence, and within a sequence
  (sorted by number) a jump of more than GAP starts a new group. CamVid (every 30th frame):
  `frames:30`.

Every image must have a group (a name the regex misses, an image without the field, a name
without a number: a ParameterError / CocoError naming the file and the image).

Example:
    image_groups(coco, "frames:30").nunique()
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from segkit.coco.files import Coco
from segkit.core.errors import CocoError, ParameterError

GROUP_SOURCES = ("regex", "field", "frames")
GROUP_BY_HELP = ('group_by is None (each image its own group), "regex:PATTERN", "field:NAME" '
                 'or "frames:GAP"')


def parse_group_by(group_by) -> tuple[str, object] | None:
    """`group_by` as (source, argument), checked: None / "" -> None; "regex:P" -> ("regex",
    compiled P); "field:NAME" -> ("field", NAME); "frames:GAP" -> ("frames", GAP >= 0)."""
    if group_by is None or (isinstance(group_by, str) and not group_by.strip()):
        return None
    if not isinstance(group_by, str) or ":" not in group_by:
        raise ParameterError(f"{GROUP_BY_HELP}; got '{group_by}'")
    source, _, argument = group_by.partition(":")
    source = source.strip()
    if source not in GROUP_SOURCES:
        raise ParameterError(f"unknown group_by source {source!r} in '{group_by}'; "
                             f"{GROUP_BY_HELP}")
    if source == "regex":
        try:
            pattern = re.compile(argument)
        except re.error as exc:
            raise ParameterError(f"group_by '{group_by}': not a valid regular expression "
                                 f"({exc})") from None
        return source, pattern
    if source == "field":
        if not argument.strip():
            raise ParameterError(f"group_by '{group_by}': name the image field, e.g. "
                                 f"field:video_id")
        return source, argument.strip()
    try:
        gap = int(argument)
    except ValueError:
        gap = -1
    if gap < 0:
        raise ParameterError(f"group_by '{group_by}': the gap must be a non-negative integer "
                             f"(frame numbers at most GAP apart form one group), e.g. frames:1")
    return source, gap


_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def image_groups(coco: Coco, group_by=None) -> pd.Series:
    r"""The group of every image: a Series image_id -> group name (str), in file order.

    `group_by`: see the module docstring (None: the image id is the group).

    Example:
        image_groups(coco, r"regex:^(\w+?)_").value_counts()
    """
    parsed = parse_group_by(group_by)
    ids = [img["id"] for img in coco.images]
    index = pd.Index(ids, name="image_id")
    if parsed is None:
        return pd.Series([str(i) for i in ids], index=index, name="group", dtype=object)
    source, argument = parsed
    names: list[str] = []
    if source == "regex":
        for img in coco.images:
            name = img["file_name"] if "/" in argument.pattern else Path(img["file_name"]).name
            match = argument.search(name)
            if match is None:
                missed = sum(argument.search(i["file_name"] if "/" in argument.pattern
                                             else Path(i["file_name"]).name) is None
                             for i in coco.images)
                raise ParameterError(
                    f"{coco.path}: group_by '{group_by}' does not match image {img['id']} "
                    f"({name!r}; {missed} of {len(ids)} names unmatched)")
            group = match.group(1) if match.re.groups else match.group(0)
            if group is None or group == "":
                raise ParameterError(f"{coco.path}: group_by '{group_by}' gives an empty group "
                                     f"for image {img['id']} ({name!r})")
            names.append(group)
    elif source == "field":
        for img in coco.images:
            if argument not in img:
                fields = sorted(k for k in img if k not in ("id",))
                raise CocoError(f"{coco.path}: image {img['id']} ({img['file_name']}) has no "
                                f"field {argument!r} for group_by '{group_by}'; its fields: "
                                f"{', '.join(fields)}")
            value = img[argument]
            names.append(value if isinstance(value, str)
                         else json.dumps(value, sort_keys=True))
    else:  # frames
        keyed = []
        for img in coco.images:
            file_name = img["file_name"]
            base = Path(file_name).name
            match = _LAST_NUMBER.search(base)
            if match is None:
                raise ParameterError(f"{coco.path}: image {img['id']} ({file_name}) has no "
                                     f"frame number in its name for group_by '{group_by}'")
            offset = len(file_name) - len(base)
            head, tail = file_name[:offset + match.start()], file_name[offset + match.end():]
            keyed.append(((head, tail), int(match.group(1)), match.group(1), img["id"]))
        runs: list[list] = []
        for sequence, number, digits, image_id in sorted(keyed):
            last = runs[-1][-1] if runs else None
            if last is None or sequence != last[0] or number - last[1] > argument:
                runs.append([])
            runs[-1].append((sequence, number, digits, image_id))
        group_of: dict = {}
        for run in runs:
            (head, tail), _, first, _ = run[0]
            name = f"{head}{first}{tail}" if len(run) == 1 else \
                f"{head}{first}..{run[-1][2]}{tail}"
            for *_, image_id in run:
                group_of[image_id] = name
        names = [group_of[i] for i in ids]
    return pd.Series(names, index=index, name="group", dtype=object)


def group_codes(groups: pd.Series) -> dict:
    """Group name -> integer code in order of first appearance (deterministic)."""
    codes: dict = {}
    for name in groups:
        codes.setdefault(name, len(codes))
    return codes


def group_counts(folds: pd.Series, groups: pd.Series, where: str = "") -> pd.DataFrame:
    """Per fold: val_images, val_groups, train_images, train_groups, for folds (image_id ->
    fold) and groups (image_id -> group, `image_groups`). A group with images in a fold's
    train and val raises a ParameterError naming the group, the fold and two of its images."""
    table = pd.DataFrame({"fold": folds, "group": groups.reindex(folds.index)})
    rows = []
    for k in range(int(folds.max()) + 1):
        val = table[table["fold"] == k]
        train = table[table["fold"] != k]
        both = sorted(set(val["group"]) & set(train["group"]), key=str)
        if both:
            group = both[0]
            v = val.index[val["group"] == group][0]
            t = train.index[train["group"] == group][0]
            raise ParameterError(
                f"{where or 'folds'}: group {group!r} spans fold {k}'s train and val (image "
                f"{t} in train, image {v} in val; {len(both)} groups straddle)")
        rows.append((k, len(val), val["group"].nunique(), len(train), train["group"].nunique()))
    return pd.DataFrame(rows, columns=["fold", "val_images", "val_groups", "train_images",
                                       "train_groups"])
