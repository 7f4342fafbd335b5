r"""Validation folds the leaderboard can trust: StratifiedGroupKFold with the image (or the user's
`group_by`) as the group.

Two ways to say what "stratified" balances, both run by scikit-learn's StratifiedGroupKFold
(`shuffle=True`, `random_state=seed`), so an image never lands in two validation folds:

* `by="annotations"` (the competition baseline): one row per annotation, label = its class,
  group = its image. An image without annotations enters as one Background row.
* `by="pixels"`: annotation counts mislead for segmentation (one huge Clothing object weighs
  as much as a battery), so each image enters with one row per *pixel unit* of each class in
  its label map, Background included; a unit is 1/100 of the average image's pixels, and every
  class present gets at least one unit. StratifiedGroupKFold then balances each class's pixel
  share across the folds instead of its annotation count.

Groups (`group_by`): images that must land in the same fold, because a validation image with
a near-twin in the training fold overstates the score (video frames, several photos of one
scene). Three spellings, all plain strings (a notebook or CLI parameter as is):

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
without a number: a ParameterError / CocoError naming the file and the image), and there must
be at least n_splits groups. `check_fold_files(..., group_by=...)` refuses fold files (made
here or by anyone) in which a group has images in both a fold's train and val files, and
given near-duplicate pairs (`segkit.near_duplicates`) counts those that cross train / val.

`fold_report` measures both shares for either assignment; the notebook shows both variants.
Files: `fold{k}_train.json` / `fold{k}_val.json` (subsets of the input file: original image
ids, file names and annotation order kept; file names stay relative to the input's data root)
and `folds.csv` (image_id, file_name, fold). Same inputs and seed, same bytes. The fold set is written atomically: built in a temporary
sibling folder and swapped into place under a lock, so two concurrent writers never mix their
folds and a failed write (read-only or full disk) leaves the previous set as it was.

Example:
    >>> coco = load_coco("data/train_all.json")                           # doctest: +SKIP
    >>> folds = make_folds(coco, TRASH, n_splits=5, seed=42)              # doctest: +SKIP
    >>> write_folds(coco, folds, "outputs/splits")                        # doctest: +SKIP
    >>> fold_report(coco, TRASH, folds, pixel_counts(coco, TRASH))        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.classes import ClassTable
from segkit.coco import Coco, load_coco, subset, write_coco
from segkit.errors import CocoError, ParameterError
from segkit.paths import _umask, outputs_dir

STRATIFY_BY = ("annotations", "pixels")
PIXEL_UNITS_PER_IMAGE = 100
GROUP_SOURCES = ("regex", "field", "frames")
GROUP_BY_HELP = ('group_by is None (each image its own group), "regex:PATTERN", "field:NAME" '
                 'or "frames:GAP"')


def _check_split_parameters(coco: Coco, n_splits, seed, by: str) -> None:
    if by not in STRATIFY_BY:
        raise ParameterError(f"by must be one of {', '.join(STRATIFY_BY)}; got {by!r}")
    if not isinstance(n_splits, (int, np.integer)) or isinstance(n_splits, bool) or n_splits < 2:
        raise ParameterError(f"n_splits must be an integer of at least 2, got {n_splits!r}")
    if n_splits > len(coco.images):
        raise ParameterError(
            f"n_splits={n_splits} is larger than the {len(coco.images)} images of {coco.path}; "
            f"allowed: 2..{len(coco.images)}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")


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
        >>> image_groups(coco, r"regex:^(\w+?)_").value_counts()         # doctest: +SKIP
        0016E5    305
        0006R0    101
        0001TP     62
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


def _group_codes(groups: pd.Series) -> dict:
    """Group name -> integer code in order of first appearance (deterministic)."""
    codes: dict = {}
    for name in groups:
        codes.setdefault(name, len(codes))
    return codes


def stratification_rows(coco: Coco, classes: ClassTable, by: str = "annotations",
                        pixels: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The (labels, groups) rows handed to StratifiedGroupKFold: class indices and image ids.

    `pixels` (from `segkit.eda.pixel_counts`) is needed for `by="pixels"`.
    """
    if by == "annotations":
        mapping = classes.category_to_index(coco.categories, str(coco.path))
        labels, groups = [], []
        for image in coco.images:
            anns = coco.annotations_by_image[image["id"]]
            image_labels = [mapping[a["category_id"]] for a in anns] or [0]  # 0: Background
            labels.extend(image_labels)
            groups.extend([image["id"]] * len(image_labels))
        return np.asarray(labels, np.int64), np.asarray(groups, np.int64)
    if by != "pixels":
        raise ParameterError(f"by must be one of {', '.join(STRATIFY_BY)}; got {by!r}")
    if pixels is None:
        raise ParameterError("by='pixels' needs the pixels table (segkit.eda.pixel_counts)")
    ids = [img["id"] for img in coco.images]
    missing = set(ids) - set(pixels.index)
    if missing:
        raise ParameterError(f"the pixels table has no row for image ids {sorted(missing)[:5]}")
    counts = pixels.loc[ids, list(classes.names)].to_numpy(np.float64)
    unit = max(1.0, counts.sum() / (PIXEL_UNITS_PER_IMAGE * len(ids)))
    units = np.where(counts > 0, np.maximum(1, np.ceil(counts / unit)), 0).astype(np.int64)
    labels = np.repeat(np.tile(np.arange(len(classes)), len(ids)), units.ravel())
    groups = np.repeat(np.repeat(np.asarray(ids, np.int64), len(classes)), units.ravel())
    return labels, groups


def make_folds(coco: Coco, classes: ClassTable, n_splits: int = 5, seed: int = 42,
               by: str = "annotations", pixels: pd.DataFrame | None = None,
               group_by=None) -> pd.Series:
    """The validation fold of every image: a Series image_id -> fold (0..n_splits-1), in file
    order. `by` is "annotations" or "pixels" (then pass `pixels` from `eda.pixel_counts`);
    `group_by` keeps each group's images in one fold (module docstring; None: the image).

    Example:
        >>> folds = make_folds(coco, TRASH, n_splits=5, seed=42)          # doctest: +SKIP
        >>> folds.value_counts()                                          # doctest: +SKIP
    """
    from sklearn.model_selection import StratifiedGroupKFold

    _check_split_parameters(coco, n_splits, seed, by)
    labels, groups = stratification_rows(coco, classes, by, pixels)
    if parse_group_by(group_by) is not None:
        names = image_groups(coco, group_by)
        codes = _group_codes(names)
        if len(codes) < n_splits:
            raise ParameterError(
                f"{coco.path}: group_by '{group_by}' gives {len(codes)} groups "
                f"({', '.join(map(str, list(codes)[:5]))}{', ...' if len(codes) > 5 else ''}), "
                f"fewer than n_splits={n_splits}; allowed: 2..{len(codes)}")
        code_of_image = {i: codes[g] for i, g in names.items()}
        groups = np.asarray([code_of_image[int(i)] for i in groups], np.int64)
        image_of_code: dict[int, list[int]] = {}
        for i, g in names.items():
            image_of_code.setdefault(codes[g], []).append(int(i))
    else:
        image_of_code = None
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=int(seed))
    fold_of_image: dict[int, int] = {}
    with warnings.catch_warnings():
        # "The least populated class has only k members": expected for rare classes; the fold
        # report shows what it means for them.
        warnings.filterwarnings("ignore", message="The least populated class")
        for fold, (_, val_rows) in enumerate(splitter.split(labels, labels, groups)):
            for group in np.unique(groups[val_rows]):
                members = [int(group)] if image_of_code is None else image_of_code[int(group)]
                for image_id in members:
                    fold_of_image[image_id] = fold
    ids = [img["id"] for img in coco.images]
    return pd.Series([fold_of_image[i] for i in ids], index=pd.Index(ids, name="image_id"),
                     name="fold", dtype=np.int64)


def write_folds(coco: Coco, folds: pd.Series, out_dir: str | os.PathLike) -> list[Path]:
    """Write fold{k}_train.json, fold{k}_val.json (k = 0..n-1) and folds.csv into `out_dir`.

    Returns the paths written. Validation happens before the first file is written. The set is
    written atomically: built in a temporary sibling folder, then swapped with `out_dir` under
    a lock (`.<name>.lock` beside it), so `out_dir` always holds one whole split, also with
    two writers at once. Other files in `out_dir` (reports, figures) are kept; fold files of
    an earlier split with more folds are not. A folder that cannot be written (read-only,
    full) raises one SegkitError naming it, and leaves the previous set as it was.
    """
    out_dir = Path(out_dir)
    ids = [img["id"] for img in coco.images]
    if set(folds.index) != set(ids) or len(folds) != len(ids):
        raise ParameterError(f"folds must give one fold to each of the {len(ids)} images of "
                             f"{coco.path}")
    n_splits = int(folds.max()) + 1
    if int(folds.min()) < 0 or sorted(set(folds)) != list(range(n_splits)):
        raise ParameterError(f"folds must use every fold 0..{n_splits - 1}, got {sorted(set(folds))}")
    documents = []
    for k in range(n_splits):
        val_ids = [i for i in ids if folds[i] == k]
        train_ids = [i for i in ids if folds[i] != k]
        documents.append((f"fold{k}_train.json", subset(coco, train_ids)))
        documents.append((f"fold{k}_val.json", subset(coco, val_ids)))
    table = pd.DataFrame({"image_id": ids,
                          "file_name": [coco.image_by_id[i]["file_name"] for i in ids],
                          "fold": [int(folds[i]) for i in ids]})
    csv_text = table.to_csv(index=False, lineterminator="\n")

    def build(folder: Path) -> None:
        for name, data in documents:
            write_coco(data, folder / name)
        (folder / "folds.csv").write_text(csv_text, encoding="utf-8")

    _replace_folder(out_dir, build)
    return [out_dir / name for name, _ in documents] + [out_dir / "folds.csv"]


def _is_fold_set_file(name: str) -> bool:
    return bool(FOLD_FILE.fullmatch(name)) or name == "folds.csv"


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive lock on `folder`'s fold set: a `.<name>.lock` file beside it (flock)."""
    import fcntl

    lock_path = folder.parent / f".{folder.name}.lock"
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _replace_folder(out_dir: Path, build) -> None:
    """Run `build(tmp)` on a temporary sibling of `out_dir`, then put it in `out_dir`'s place
    (keeping `out_dir`'s files that are not part of a fold set); any OSError becomes one
    SegkitError and nothing of the new set is left behind."""
    from segkit.errors import SegkitError

    tmp = None
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise SegkitError(f"cannot write the folds to {out_dir}: it is a file, not a folder")
        if out_dir.is_dir() and not os.access(out_dir, os.W_OK):
            raise SegkitError(f"cannot write the folds to {out_dir}: the folder is read-only")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with _folder_lock(out_dir):
            tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp",
                                        dir=out_dir.parent))
            os.chmod(tmp, 0o777 & ~_umask())
            build(tmp)
            if out_dir.is_dir():
                for entry in sorted(out_dir.iterdir()):
                    if not _is_fold_set_file(entry.name):
                        _link_tree(entry, tmp / entry.name)
                if not _exchange(tmp, out_dir):
                    old = out_dir.parent / f"{tmp.name}.old"
                    os.rename(out_dir, old)
                    os.rename(tmp, out_dir)
                    tmp = old
            else:
                os.rename(tmp, out_dir)
                tmp = None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SegkitError(f"cannot write the folds to {out_dir}: {reason}"
                          f"{f' ({exc.filename})' if exc.filename else ''}; the folder was "
                          f"left as it was") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (or copy) a file or folder tree to `target`."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        return dst

    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, copy_function=link, symlinks=True)
    elif source.is_symlink():
        os.symlink(os.readlink(source), target)
    else:
        link(source, target)


def fold_report(coco: Coco, classes: ClassTable, folds: pd.Series, pixels: pd.DataFrame,
                group_by=None) -> pd.DataFrame:
    """Per fold and class: the share of the class's annotations and of its pixels that the
    fold's validation set holds, against the ideal 1/n_splits.

    Columns: fold, class, val_images, val_groups, train_groups (groups of `group_by`; without
    it each image is a group), annotation_share, pixel_share, expected,
    annotation_deviation, pixel_deviation (share - expected). Classes with no annotations
    and no pixels are left out. A group in a fold's train and val raises (`group_counts`).
    """
    counts = group_counts(folds, image_groups(coco, group_by)).set_index("fold")
    n_splits = int(folds.max()) + 1
    mapping = classes.category_to_index(coco.categories, str(coco.path))
    ann_counts = np.zeros((n_splits, len(classes)), np.int64)
    for ann in coco.annotations:
        ann_counts[folds[ann["image_id"]], mapping[ann["category_id"]]] += 1
    pixel_matrix = pixels.loc[folds.index, list(classes.names)].to_numpy(np.int64)
    pix_counts = np.zeros((n_splits, len(classes)), np.int64)
    np.add.at(pix_counts, folds.to_numpy(), pixel_matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        ann_share = ann_counts / ann_counts.sum(0)
        pix_share = pix_counts / pix_counts.sum(0)
    rows = []
    expected = 1.0 / n_splits
    val_images = np.bincount(folds.to_numpy(), minlength=n_splits)
    for k in range(n_splits):
        for c, name in enumerate(classes.names):
            if ann_counts[:, c].sum() == 0 and pix_counts[:, c].sum() == 0:
                continue
            a = ann_share[k, c] if ann_counts[:, c].sum() else np.nan
            rows.append((k, name, int(val_images[k]), int(counts.loc[k, "val_groups"]),
                         int(counts.loc[k, "train_groups"]), a, pix_share[k, c], expected,
                         a - expected, pix_share[k, c] - expected))
    return pd.DataFrame(rows, columns=["fold", "class", "val_images", "val_groups",
                                       "train_groups", "annotation_share", "pixel_share",
                                       "expected", "annotation_deviation", "pixel_deviation"])


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


def worst_deviation(report: pd.DataFrame) -> pd.DataFrame:
    """Per class: the largest |share - 1/n_splits| over the folds, for annotations and for
    pixels (Background has no annotations: NaN there)."""
    table = report.assign(annotation_deviation=report["annotation_deviation"].abs(),
                          pixel_deviation=report["pixel_deviation"].abs())
    worst = table.groupby("class", sort=False)[["annotation_deviation", "pixel_deviation"]].max()
    return worst.rename(columns={"annotation_deviation": "worst_annotation_deviation",
                                 "pixel_deviation": "worst_pixel_deviation"})


FOLD_FILE = re.compile(r"fold(\d+)_(train|val)\.json$")


def available_folds(split_dir: str | os.PathLike) -> list[int]:
    """Fold indices that have both a train and a val file in `split_dir`."""
    found: dict[int, set] = {}
    folder = Path(split_dir)
    if folder.is_dir():
        for path in folder.iterdir():
            match = FOLD_FILE.fullmatch(path.name)
            if match:
                found.setdefault(int(match.group(1)), set()).add(match.group(2))
    return sorted(k for k, kinds in found.items() if kinds == {"train", "val"})


def fold_files(split_dir: str | os.PathLike, fold: int) -> tuple[Path, Path]:
    """(train, val) files of one fold; an absent folder or an out-of-range fold raises a
    ParameterError listing the folds there are.

    Example:
        >>> train_file, val_file = fold_files("outputs/splits", 0)        # doctest: +SKIP
    """
    folds = available_folds(split_dir)
    if not folds:
        raise ParameterError(f"no fold files (fold{{k}}_train.json / fold{{k}}_val.json) in "
                             f"{split_dir}: run notebooks/02_split.ipynb or "
                             f"`python -m segkit split` first")
    if not isinstance(fold, (int, np.integer)) or isinstance(fold, bool) or fold not in folds:
        raise ParameterError(f"fold {fold!r} is out of range; allowed: "
                             f"{', '.join(map(str, folds))} (in {split_dir})")
    folder = Path(split_dir)
    return folder / f"fold{fold}_train.json", folder / f"fold{fold}_val.json"


def check_fold_files(split_dir: str | os.PathLike, source: Coco | None = None, group_by=None,
                     duplicate_pairs: pd.DataFrame | None = None,
                     max_duplicate_pairs: int | None = None) -> pd.DataFrame:
    """Read the fold files back and check them: per fold, the train and val image counts,
    images in both train and val, val images also in another fold's val, and (given the
    source) images missing from the fold. `ok` is True when all three counts are 0.

    The leak checks, for fold files made here or by anyone:
    * `group_by` (module docstring): a group with images in a fold's train and val file
      raises a CocoError naming the group, the files and two of its images; the table gets
      val_groups and train_groups columns.
    * `duplicate_pairs` (`segkit.near_duplicates.find_pairs`: image_a, image_b, ids of the
      source file; fold files keep them): the `duplicate_pairs` column counts the pairs with one
      image in the fold's train file and the other in its val file. Above
      `max_duplicate_pairs` (None: report only) a CocoError names the fold and a pair.
    """
    folds = available_folds(split_dir)
    if not folds:
        raise ParameterError(f"no fold files in {split_dir}")
    max_duplicate_pairs = _check_max_pairs(max_duplicate_pairs)
    if max_duplicate_pairs is not None and duplicate_pairs is None:
        raise ParameterError("max_duplicate_pairs needs the near-duplicate pairs "
                             "(segkit.near_duplicates.find_pairs)")
    parse_group_by(group_by)
    val_sets, train_sets, group_columns = {}, {}, {}
    for k in folds:
        train_file, val_file = fold_files(split_dir, k)
        train_coco, val_coco = load_coco(train_file), load_coco(val_file)
        train_sets[k] = {img["id"] for img in train_coco.images}
        val_sets[k] = {img["id"] for img in val_coco.images}
        if parse_group_by(group_by) is not None:
            train_groups = image_groups(train_coco, group_by)
            val_groups = image_groups(val_coco, group_by)
            both = sorted(set(train_groups) & set(val_groups), key=str)
            if both:
                group = both[0]
                t = train_groups.index[train_groups == group][0]
                v = val_groups.index[val_groups == group][0]
                raise CocoError(
                    f"{val_file}: group {group!r} (group_by '{group_by}') spans train and val "
                    f"of fold {k}: image {t} ({train_coco.image_by_id[t]['file_name']}) in "
                    f"{train_file.name}, image {v} ({val_coco.image_by_id[v]['file_name']}) in "
                    f"{val_file.name}; {len(both)} groups straddle")
            group_columns[k] = (val_groups.nunique(), train_groups.nunique())
    everything = {img["id"] for img in source.images} if source is not None else None
    rows = []
    crossing_counts = {}
    for k in folds:
        others = set().union(*(val_sets[j] for j in folds if j != k))
        in_both = len(train_sets[k] & val_sets[k])
        in_other_val = len(val_sets[k] & others)
        missing = len(everything - train_sets[k] - val_sets[k]) if everything is not None else 0
        row = [k, len(train_sets[k]), len(val_sets[k]), in_both, in_other_val, missing,
               in_both == 0 and in_other_val == 0 and missing == 0]
        if group_columns:
            row += list(group_columns[k])
        if duplicate_pairs is not None:
            crossing = crossing_pairs(duplicate_pairs, train_sets[k], val_sets[k])
            crossing_counts[k] = crossing
            row.append(len(crossing))
        rows.append(row)
    columns = ["fold", "train_images", "val_images", "in_train_and_val", "in_another_val",
               "missing", "ok"]
    columns += ["val_groups", "train_groups"] if group_columns else []
    columns += ["duplicate_pairs"] if duplicate_pairs is not None else []
    table = pd.DataFrame(rows, columns=columns)
    if max_duplicate_pairs is not None:
        for k, crossing in crossing_counts.items():
            if len(crossing) > max_duplicate_pairs:
                first = crossing.iloc[0]
                names = [f"{first[c]}" for c in ("file_a", "file_b") if c in crossing.columns]
                example = f"images {first['image_a']} and {first['image_b']}" + (
                    f" ({names[0]} ~ {names[1]})" if len(names) == 2 else "")
                raise CocoError(
                    f"{split_dir}: fold {k} has {len(crossing)} near-duplicate pairs across "
                    f"train and val, more than max_duplicate_pairs={max_duplicate_pairs}; e.g. "
                    f"{example}. Group them (group_by) or raise the limit")
    return table


def crossing_pairs(pairs: pd.DataFrame, train_ids, val_ids) -> pd.DataFrame:
    """The pairs (columns image_a, image_b) with one image in `train_ids` and the other in
    `val_ids`: near-duplicates that leak across a fold's boundary."""
    train_ids, val_ids = set(train_ids), set(val_ids)
    a, b = pairs["image_a"], pairs["image_b"]
    mask = (a.isin(train_ids) & b.isin(val_ids)) | (a.isin(val_ids) & b.isin(train_ids))
    return pairs[mask.to_numpy()]


def duplicate_pairs_per_fold(pairs: pd.DataFrame, folds: pd.Series,
                             max_duplicate_pairs: int | None = None) -> pd.DataFrame:
    """Per fold (folds: image_id -> fold): near-duplicate pairs across its train / val
    boundary, pairs inside its val set, and pairs inside its train set. With
    `max_duplicate_pairs` (None or "": report only), a fold with more pairs across raises a
    CocoError naming the fold and a pair: the check 02_split runs before writing anything."""
    max_duplicate_pairs = _check_max_pairs(max_duplicate_pairs)
    ids = set(folds.index)
    pairs = pairs[pairs["image_a"].isin(ids).to_numpy() & pairs["image_b"].isin(ids).to_numpy()]
    fa = folds.reindex(pairs["image_a"]).to_numpy()
    fb = folds.reindex(pairs["image_b"]).to_numpy()
    rows = []
    for k in range(int(folds.max()) + 1):
        across = (fa == k) != (fb == k)
        if max_duplicate_pairs is not None and across.sum() > max_duplicate_pairs:
            first = pairs[across].iloc[0]
            raise CocoError(
                f"fold {k} has {int(across.sum())} near-duplicate pairs across train and val, "
                f"more than max_duplicate_pairs={max_duplicate_pairs}; e.g. images "
                f"{first['image_a']} and {first['image_b']}"
                + (f" ({first['file_a']} ~ {first['file_b']})" if "file_a" in pairs else "")
                + ". Group them (group_by) or raise the limit")
        rows.append((k, int(across.sum()), int(((fa == k) & (fb == k)).sum()),
                     int(((fa != k) & (fb != k)).sum())))
    return pd.DataFrame(rows, columns=["fold", "pairs_across", "pairs_in_val", "pairs_in_train"])


def _check_max_pairs(max_duplicate_pairs):
    """None / "" / "None" -> None; an integer (or its text, as papermill -r passes it) -> int."""
    if isinstance(max_duplicate_pairs, str):
        text = max_duplicate_pairs.strip()
        if text in ("", "None", "none", "null"):
            return None
        try:
            max_duplicate_pairs = int(text)
        except ValueError:
            pass
    if max_duplicate_pairs is None:
        return None
    if (not isinstance(max_duplicate_pairs, (int, np.integer))
            or isinstance(max_duplicate_pairs, bool) or max_duplicate_pairs < 0):
        raise ParameterError(f"max_duplicate_pairs must be None or a non-negative integer, got "
                             f"{max_duplicate_pairs!r}")
    return int(max_duplicate_pairs)


def split_file(annotation_file: str | os.PathLike, out_dir: str | os.PathLike | None = None,
               n_splits: int = 5, seed: int = 42, by: str = "annotations",
               group_by=None) -> list[Path]:
    """Load a COCO file, make folds and write them into `out_dir` (default `outputs/splits`):
    the whole split in one call (the CLI's). `group_by`: see the module docstring.

    Example:
        >>> split_file("data/train_all.json", "outputs/splits", n_splits=5, seed=42)
        ...                                                               # doctest: +SKIP
    """
    from segkit.eda import pixel_counts

    coco = load_coco(annotation_file)
    if not coco.images:
        raise CocoError(f"{coco.path}: no images to split")
    _check_split_parameters(coco, n_splits, seed, by)
    parse_group_by(group_by)
    classes = ClassTable.for_coco(coco.categories)
    pixels = pixel_counts(coco, classes) if by == "pixels" else None
    folds = make_folds(coco, classes, n_splits, seed, by, pixels, group_by)
    group_counts(folds, image_groups(coco, group_by), str(coco.path))
    return write_folds(coco, folds, out_dir if out_dir is not None else outputs_dir() / "splits")
