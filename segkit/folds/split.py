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

Groups (`group_by`, spelled as `segkit.folds.groups` describes: None, "regex:PATTERN", "field:NAME"
or "frames:GAP"): images that must land in the same fold, because a validation image with a
near-twin in the training fold overstates the score. There must be at least n_splits groups.
`check_fold_files(..., group_by=...)` (`segkit.folds.checks`) refuses fold files (made here or
by anyone) in which a group has images in both a fold's train and val files, and given
near-duplicate pairs (`segkit.data.near_duplicates`) counts those that cross train / val.

`fold_report` measures both shares for either assignment; the notebook shows both variants.
Files (`segkit.folds.files`): `fold{k}_train.json` / `fold{k}_val.json` (subsets of the input
file: original image ids, file names and annotation order kept; file names stay relative to
the input's data root) and `folds.csv` (image_id, file_name, fold). Same inputs and seed, same
bytes. The fold set is written atomically: built in a temporary sibling folder and swapped
into place under a lock, so two concurrent writers never mix their folds and a failed write
(read-only or full disk) leaves the previous set as it was.

The group, fold-file and leak-check functions are importable from here as well
(`split.image_groups`, `split.write_folds`, `split.check_fold_files`, ...), as the notebooks
use them.

Example:
    coco = load_coco("data/train_all.json")
    folds = make_folds(coco, TRASH, n_splits=5, seed=42)
    write_folds(coco, folds, "outputs/splits")
    fold_report(coco, TRASH, folds, pixel_counts(coco, TRASH))
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.coco.files import Coco, load_coco
from segkit.core.classes import ClassTable
from segkit.core.errors import CocoError, ParameterError
from segkit.core.paths import outputs_dir
from segkit.folds.files import write_folds
from segkit.folds.groups import (
    group_codes,
    group_counts,
    image_groups,
    parse_group_by,
)

STRATIFY_BY = ("annotations", "pixels")
PIXEL_UNITS_PER_IMAGE = 100


def stratify_variants(first: str = "annotations") -> list[str]:
    """Every stratification, `first` first (02_split compares them and writes `first`).

    Example:
        >>> stratify_variants("pixels")
        ['pixels', 'annotations']
    """
    if first not in STRATIFY_BY:
        raise ParameterError(f"stratify_by must be one of {', '.join(STRATIFY_BY)}; got {first!r}")
    return [first] + [by for by in STRATIFY_BY if by != first]


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


def _check_fold_count(coco: Coco, classes: ClassTable, n_splits: int, by: str,
                      labels: np.ndarray, groups: np.ndarray) -> None:
    """StratifiedGroupKFold needs a class with at least n_splits members (annotations, or
    pixel units by="pixels") and at least n_splits groups: a ParameterError with the range
    the data allows instead of sklearn's message."""
    if not len(labels):
        return
    values, counts = np.unique(labels, return_counts=True)
    n_groups = len(np.unique(groups))
    top = int(counts.max())
    limit = min(top, n_groups)
    if n_splits > limit:
        name = classes.names[int(values[counts.argmax()])]
        unit = "annotations" if by == "annotations" else "pixel units"
        raise ParameterError(
            f"n_splits={n_splits} is more than {coco.path} allows: stratified folds need "
            f"n_splits members of a class (its most frequent, {name}, has {top} {unit}) and "
            f"n_splits groups (it has {n_groups}); allowed: 2..{limit}")


def stratification_rows(coco: Coco, classes: ClassTable, by: str = "annotations",
                        pixels: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The (labels, groups) rows handed to StratifiedGroupKFold: class indices and image ids.

    `pixels` (from `segkit.coco.pixels.pixel_counts`) is needed for `by="pixels"`.
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
        raise ParameterError("by='pixels' needs the pixels table (segkit.coco.pixels.pixel_counts)")
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
    `group_by` keeps each group's images in one fold (`segkit.folds.groups`; None: the image).

    Example:
        folds = make_folds(coco, TRASH, n_splits=5, seed=42)
        folds.value_counts()
    """
    from sklearn.model_selection import StratifiedGroupKFold

    _check_split_parameters(coco, n_splits, seed, by)
    labels, groups = stratification_rows(coco, classes, by, pixels)
    if parse_group_by(group_by) is not None:
        names = image_groups(coco, group_by)
        codes = group_codes(names)
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
    _check_fold_count(coco, classes, n_splits, by, labels, groups)
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


def worst_deviation(report: pd.DataFrame) -> pd.DataFrame:
    """Per class: the largest |share - 1/n_splits| over the folds, for annotations and for
    pixels (Background has no annotations: NaN there)."""
    table = report.assign(annotation_deviation=report["annotation_deviation"].abs(),
                          pixel_deviation=report["pixel_deviation"].abs())
    worst = table.groupby("class", sort=False)[["annotation_deviation", "pixel_deviation"]].max()
    return worst.rename(columns={"annotation_deviation": "worst_annotation_deviation",
                                 "pixel_deviation": "worst_pixel_deviation"})


def split_file(annotation_file: str | os.PathLike, out_dir: str | os.PathLike | None = None,
               n_splits: int = 5, seed: int = 42, by: str = "annotations",
               group_by=None) -> list[Path]:
    """Load a COCO file, make folds and write them into `out_dir` (default `outputs/splits`):
    the whole split in one call (the CLI's). `group_by`: see `segkit.folds.groups`.

    Example:
        split_file("data/train_all.json", "outputs/splits", n_splits=5, seed=42)
    """
    from segkit.coco.pixels import pixel_counts

    coco = load_coco(annotation_file)
    if not coco.images:
        raise CocoError(f"{coco.path}: no images to split")
    _check_split_parameters(coco, n_splits, seed, by)
    parse_group_by(group_by)
    classes = ClassTable.for_coco(coco.categories)
    pixels = pixel_counts(coco, classes) if by == "pixels" else None
    folds = make_folds(coco, classes, n_splits, seed, by, pixels, group_by)
    group_counts(folds, image_groups(coco, group_by), str(coco.path))
    return write_folds(coco, folds, out_dir if out_dir is not None else outputs_dir() / "splits",
                       settings={"seed": int(seed), "by": by, "group_by": group_by or None})


def fold_folder(data_root: str | os.PathLike = "", splits_dir: str | os.PathLike = "") -> Path:
    """The folder of 02_split's fold files: `splits_dir`, default outputs/splits. On the
    embedded sample (no data root, no splits_dir) missing folds are made with 02_split's
    defaults, so 03 and 04 run on their own; real data must be split explicitly (02_split)."""
    from segkit.core.paths import resolve_output_path
    from segkit.data.sample import resolve_data_root
    from segkit.folds.files import available_folds

    folder = resolve_output_path(splits_dir) if splits_dir else outputs_dir() / "splits"
    if not os.fspath(data_root) and not splits_dir and not available_folds(folder):
        print(f"no fold files in {folder}: making them with 02_split's defaults")
        split_file(resolve_data_root("") / "train_all.json", folder)
    return folder
