"""Leak checks for fold files, made here or by anyone: images in a fold's train and val,
groups that straddle them (`segkit.folds.groups`), and near-duplicate pairs across them
(`segkit.data.near_duplicates`).

Example:
    check_fold_files("outputs/splits", coco, group_by="frames:30")
    duplicate_pairs_per_fold(pairs, folds, max_duplicate_pairs=0)
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from segkit.coco.files import Coco, load_coco
from segkit.core.errors import CocoError, ParameterError
from segkit.folds.files import available_folds, fold_files
from segkit.folds.groups import image_groups, parse_group_by


def check_fold_files(split_dir: str | os.PathLike, source: Coco | None = None, group_by=None,
                     duplicate_pairs: pd.DataFrame | None = None,
                     max_duplicate_pairs: int | None = None) -> pd.DataFrame:
    """Read the fold files back and check them: per fold, the train and val image counts,
    images in both train and val, val images also in another fold's val, and (given the
    source) images missing from the fold. `ok` is True when all three counts are 0.

    The leak checks, for fold files made here or by anyone:
    * `group_by` (`segkit.folds.groups`): a group with images in a fold's train and val file
      raises a CocoError naming the group, the files and two of its images; the table gets
      val_groups and train_groups columns.
    * `duplicate_pairs` (`segkit.data.near_duplicates.find_pairs`: image_a, image_b, ids of the
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
                             "(segkit.data.near_duplicates.find_pairs)")
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
