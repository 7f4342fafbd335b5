"""Validation folds the leaderboard can trust: StratifiedGroupKFold with the image as the group.

Two ways to say what "stratified" balances, both run by scikit-learn's StratifiedGroupKFold
(`shuffle=True`, `random_state=seed`), so an image never lands in two validation folds:

* `by="annotations"` (the competition baseline): one row per annotation, label = its class,
  group = its image. An image without annotations enters as one Background row.
* `by="pixels"`: annotation counts mislead for segmentation (one huge Clothing object weighs
  as much as a battery), so each image enters with one row per *pixel unit* of each class in
  its label map, Background included; a unit is 1/100 of the average image's pixels, and every
  class present gets at least one unit. StratifiedGroupKFold then balances each class's pixel
  share across the folds instead of its annotation count.

`fold_report` measures both shares for either assignment; the notebook shows both variants.
Files: `fold{k}_train.json` / `fold{k}_val.json` (subsets of the input file: original image
ids, file names and annotation order kept; file names stay relative to the input's data root)
and `folds.csv` (image_id, file_name, fold). Same inputs and seed, same bytes.

Example:
    >>> coco = load_coco("data/train_all.json")                           # doctest: +SKIP
    >>> folds = make_folds(coco, TRASH, n_splits=5, seed=42)              # doctest: +SKIP
    >>> write_folds(coco, folds, "outputs/splits")                        # doctest: +SKIP
    >>> fold_report(coco, TRASH, folds, pixel_counts(coco, TRASH))        # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.classes import ClassTable
from segkit.coco import Coco, load_coco, subset, write_coco
from segkit.errors import CocoError, ParameterError
from segkit.paths import outputs_dir, write_text_atomic

STRATIFY_BY = ("annotations", "pixels")
PIXEL_UNITS_PER_IMAGE = 100


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
               by: str = "annotations", pixels: pd.DataFrame | None = None) -> pd.Series:
    """The validation fold of every image: a Series image_id -> fold (0..n_splits-1), in file
    order. `by` is "annotations" or "pixels" (then pass `pixels` from `eda.pixel_counts`).

    Example:
        >>> folds = make_folds(coco, TRASH, n_splits=5, seed=42)          # doctest: +SKIP
        >>> folds.value_counts()                                          # doctest: +SKIP
    """
    from sklearn.model_selection import StratifiedGroupKFold

    _check_split_parameters(coco, n_splits, seed, by)
    labels, groups = stratification_rows(coco, classes, by, pixels)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=int(seed))
    fold_of_image: dict[int, int] = {}
    with warnings.catch_warnings():
        # "The least populated class has only k members": expected for rare classes; the fold
        # report shows what it means for them.
        warnings.filterwarnings("ignore", message="The least populated class")
        for fold, (_, val_rows) in enumerate(splitter.split(labels, labels, groups)):
            for image_id in np.unique(groups[val_rows]):
                fold_of_image[int(image_id)] = fold
    ids = [img["id"] for img in coco.images]
    return pd.Series([fold_of_image[i] for i in ids], index=pd.Index(ids, name="image_id"),
                     name="fold", dtype=np.int64)


def write_folds(coco: Coco, folds: pd.Series, out_dir: str | os.PathLike) -> list[Path]:
    """Write fold{k}_train.json, fold{k}_val.json (k = 0..n-1) and folds.csv into `out_dir`.

    Returns the paths written. Validation happens before the first file is written.
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
        documents.append((out_dir / f"fold{k}_train.json", subset(coco, train_ids)))
        documents.append((out_dir / f"fold{k}_val.json", subset(coco, val_ids)))
    written = [write_coco(data, path) for path, data in documents]
    # a folder that held more folds before keeps none of them: fold k >= n_splits is stale
    for k in available_folds(out_dir):
        if k >= n_splits:
            for part in ("train", "val"):
                (out_dir / f"fold{k}_{part}.json").unlink(missing_ok=True)
    table = pd.DataFrame({"image_id": ids,
                          "file_name": [coco.image_by_id[i]["file_name"] for i in ids],
                          "fold": [int(folds[i]) for i in ids]})
    csv = out_dir / "folds.csv"
    write_text_atomic(csv, table.to_csv(index=False, lineterminator="\n"))
    return written + [csv]


def fold_report(coco: Coco, classes: ClassTable, folds: pd.Series, pixels: pd.DataFrame
                ) -> pd.DataFrame:
    """Per fold and class: the share of the class's annotations and of its pixels that the
    fold's validation set holds, against the ideal 1/n_splits.

    Columns: fold, class, val_images, annotation_share, pixel_share, expected,
    annotation_deviation, pixel_deviation (share - expected). Classes with no annotations
    and no pixels are left out.
    """
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
            rows.append((k, name, int(val_images[k]), a, pix_share[k, c], expected,
                         a - expected, pix_share[k, c] - expected))
    return pd.DataFrame(rows, columns=["fold", "class", "val_images", "annotation_share",
                                       "pixel_share", "expected", "annotation_deviation",
                                       "pixel_deviation"])


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


def check_fold_files(split_dir: str | os.PathLike, source: Coco | None = None) -> pd.DataFrame:
    """Read the fold files back and check them: per fold, the train and val image counts,
    images in both train and val, val images also in another fold's val, and (given the
    source) images missing from the fold. `ok` is True when all three counts are 0.
    """
    folds = available_folds(split_dir)
    if not folds:
        raise ParameterError(f"no fold files in {split_dir}")
    val_sets, train_sets = {}, {}
    for k in folds:
        train_file, val_file = fold_files(split_dir, k)
        train_sets[k] = {img["id"] for img in load_coco(train_file).images}
        val_sets[k] = {img["id"] for img in load_coco(val_file).images}
    everything = {img["id"] for img in source.images} if source is not None else None
    rows = []
    for k in folds:
        others = set().union(*(val_sets[j] for j in folds if j != k))
        in_both = len(train_sets[k] & val_sets[k])
        in_other_val = len(val_sets[k] & others)
        missing = len(everything - train_sets[k] - val_sets[k]) if everything is not None else 0
        rows.append((k, len(train_sets[k]), len(val_sets[k]), in_both, in_other_val, missing,
                     in_both == 0 and in_other_val == 0 and missing == 0))
    return pd.DataFrame(rows, columns=["fold", "train_images", "val_images", "in_train_and_val",
                                       "in_another_val", "missing", "ok"])


def split_file(annotation_file: str | os.PathLike, out_dir: str | os.PathLike | None = None,
               n_splits: int = 5, seed: int = 42, by: str = "annotations") -> list[Path]:
    """Load a COCO file, make folds and write them into `out_dir` (default `outputs/splits`):
    the whole split in one call (the CLI's).

    Example:
        >>> split_file("data/train_all.json", "outputs/splits", n_splits=5, seed=42)
        ...                                                               # doctest: +SKIP
    """
    from segkit.eda import pixel_counts

    coco = load_coco(annotation_file)
    if not coco.images:
        raise CocoError(f"{coco.path}: no images to split")
    _check_split_parameters(coco, n_splits, seed, by)
    classes = ClassTable.for_coco(coco.categories)
    pixels = pixel_counts(coco, classes) if by == "pixels" else None
    folds = make_folds(coco, classes, n_splits, seed, by, pixels)
    return write_folds(coco, folds, out_dir if out_dir is not None else outputs_dir() / "splits")
