"""The data a training run reads: its train and val files (a fold, explicit files, or every
training image for fold=all), a final model's iterations from its CV runs, and the record of
them that the run folder keeps (data.json)."""

from __future__ import annotations

from pathlib import Path

from segkit.coco.files import load_coco
from segkit.core.paths import (
    resolve_output_path,
)
from segkit.data.sample import resolve_data_root
from segkit.folds.full_data import full_data_sources
from segkit.folds.split import fold_folder
from segkit.train.sources import (
    resolve_source,
)


def training_files(p: dict) -> tuple[Path, Path, Path | None]:
    """(data root, train COCO file, val COCO file) of checked parameters; a full-data run
    (fold=all): its first training file and its holdout file, None without one
    (segkit.folds.full_data_sources)."""
    from segkit.folds.files import fold_files

    root = resolve_data_root(p["data_root"])
    if p["train_file"]:
        return root, resolve_output_path(p["train_file"]), resolve_output_path(p["val_file"])
    if p["fold"] == "all":
        files, holdout = full_data_sources(p["data_root"], p["splits_dir"], p["holdout_file"])
        return root, files[0], holdout
    train, val = fold_files(fold_folder(p["data_root"], p["splits_dir"]), p["fold"])
    return root, train, val


def full_data_iterations(p: dict):
    """A full-data run's iterations from `iters_from` (segkit.recipe.final.final_iterations
    over the images it trains on), or None without iters_from."""
    if not p["iters_from"] or p["fold"] != "all":
        return None
    from segkit.folds.full_data import images_without
    from segkit.recipe.final import final_iterations

    files, holdout = full_data_sources(p["data_root"], p["splits_dir"], p["holdout_file"])
    held = {img["file_name"] for img in load_coco(holdout).images} if holdout else set()
    n_all = sum(len(images_without(load_coco(f).images, held)) for f in files)
    return final_iterations(p["iters_from"], n_all)


def data_record_of(p: dict) -> dict:
    """What a run of checked parameters `p` records in data.json (segkit.results.runs)."""
    from segkit.results.run_data import data_record

    root, train_file, val_file = training_files(p)
    extra = [resolve_source(s if isinstance(s, dict) else str(s))
             for s in p["extra_train_files"]]
    split_dir = None if p["train_file"] else fold_folder(p["data_root"], p["splits_dir"])
    return data_record(root, train_file, val_file, extra, split_dir, p["fold"])
