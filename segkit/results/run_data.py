"""What a run trained on, as data.json records it: each file's resolved path and sha256, and the
split's settings when the files come from fold files (segkit.results.runs checks them)."""

from __future__ import annotations

import os
from pathlib import Path

from segkit.core.errors import SegkitError
from segkit.core.paths import (
    file_sha256,
)

DATA_FILE = "data.json"


_SPLIT_KEYS = ("source", "source_sha256", "images", "n_splits", "seed", "by", "group_by")


def _entries(record: dict) -> list[dict]:
    return [record["train"]] + ([record["val"]] if record.get("val") else []) + \
        list(record.get("extra_train") or [])


def data_record(data_root: str | os.PathLike, train_file: str | os.PathLike,
                val_file: str | os.PathLike, extra_train=(),
                split_dir: str | os.PathLike | None = None, fold: int | None = None) -> dict:
    """What a run's data.json records (module docstring): the data root, the train and val
    files and each extra train source as (COCO file, its image folder) pairs, resolved, with
    their sha256; for a fold, the split folder, the fold and what its split.json says (when
    that split.json belongs to these very files)."""
    from segkit.folds.files import read_split_info

    def entry(path, root=None) -> dict:
        path = Path(path).resolve()
        try:
            found = {"path": str(path), "sha256": file_sha256(path)}
        except OSError as exc:
            raise SegkitError(f"{path}: cannot read it to record the run's data "
                              f"({exc.strerror or exc})") from None
        return found if root is None else {**found, "data_root": str(Path(root).resolve())}

    record = {"data_root": str(Path(data_root).resolve()), "train": entry(train_file),
              "val": entry(val_file) if val_file is not None else None,
              "extra_train": [entry(path, root) for path, root in extra_train], "split": None}
    if split_dir is not None:
        info = read_split_info(split_dir) or {}
        files = info.get("files") or {}
        own = all(files.get(Path(record[k]["path"]).name) == record[k]["sha256"]
                  for k in ("train", "val") if record[k] is not None)
        record["split"] = {"folder": str(Path(split_dir).resolve()), "fold": fold,
                           **({k: info.get(k) for k in _SPLIT_KEYS} if own and files else {})}
    return record
