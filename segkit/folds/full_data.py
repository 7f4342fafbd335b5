"""What a full-data run (fold=all) trains on: every training image, once.

`train_all.json` of the data root when there is one (the competition layout); else the union
of a split's folds (`fold0_train.json` and `fold0_val.json` together hold every image of the
split, each once). A holdout file's images are left out of either (`images_without`).

Example:
    files = full_data_files("/data/trash", "outputs/splits")   # [/data/trash/train_all.json]
"""

from __future__ import annotations

import os
from pathlib import Path

from segkit.core.errors import ParameterError

FULL_DATA_FILE = "train_all.json"


def full_data_files(data_root: str | os.PathLike, split_dir: str | os.PathLike | None
                    ) -> list[Path]:
    """The COCO files of every training image: [data_root/train_all.json] when it exists,
    else [fold0_train.json, fold0_val.json] of `split_dir` (their union is the split's every
    image); a ParameterError when there is neither."""
    from segkit.folds.files import available_folds, fold_files

    whole = Path(data_root) / FULL_DATA_FILE
    if whole.is_file():
        return [whole]
    folds = available_folds(split_dir) if split_dir else []
    if not folds:
        raise ParameterError(f"fold=all: no {FULL_DATA_FILE} in {data_root} and no fold files "
                             f"in {split_dir or 'the splits folder'} to take the union of")
    return list(fold_files(split_dir, folds[0]))


def full_data_sources(data_root: str | os.PathLike = "", splits_dir: str | os.PathLike = "",
                      holdout_file: str | os.PathLike = "") -> tuple[list[Path], Path | None]:
    """(training COCO files, holdout file or None) of a full-data run with these training
    parameters: `full_data_files` of the data root ('': the embedded sample) and the split
    folder (`splits_dir`, default outputs/splits; only asked when there is no
    train_all.json), and `holdout_file` (relative to the data root, else to outputs/)."""
    from segkit.core.paths import resolve_output_path
    from segkit.data.sample import resolve_data_root
    from segkit.folds.split import fold_folder

    root = resolve_data_root(data_root)
    split = None if (root / FULL_DATA_FILE).is_file() else fold_folder(data_root, splits_dir)
    holdout = None
    if holdout_file:
        given = Path(holdout_file)
        holdout = given if given.is_absolute() else root / given \
            if (root / given).is_file() else resolve_output_path(given)
    return full_data_files(root, split), holdout


def images_without(images: list[dict], holdout_names: set[str]) -> list[dict]:
    """The image entries whose file_name is not among the holdout's."""
    return [img for img in images if img["file_name"] not in holdout_names]
