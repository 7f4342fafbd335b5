"""TODO docstring"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
import numpy as np
import pandas as pd
from segkit.errors import ParameterError, SegkitError
from segkit.paths import PROJECT_ROOT, outputs_dir, read_json_file, resolve_output_path


def runs_or_default(runs: str | os.PathLike | Sequence[str | os.PathLike] | None,
                    fold: int = 0, data_root: str | os.PathLike = "",
                    search: bool = False) -> list:
    """The runs a notebook parameter names (one folder or name, or a list). Empty means every
    run validated on `fold` when `search` (07), and 04_train's default run of the fold when
    there is none (trained first if absent)."""
    from segkit.runs import Run, find_runs

    if isinstance(runs, (str, os.PathLike)):
        runs = [runs] if os.fspath(runs) else []
    opened = [Run.open(r) for r in runs or []]
    if not opened and search:
        opened = find_runs(fold=fold)
    return opened or [default_run(fold, data_root)]


def default_run(fold: int = 0, data_root: str | os.PathLike = ""):
    """04_train's default run of a fold, trained first (by executing 04_train with its
    defaults) when it is not there yet, so notebooks 05-07 run top to bottom on their own."""
    from segkit.runs import Run
    from segkit.train_parameters import BY_NAME

    path = outputs_dir() / "runs" / f"{BY_NAME['model'].default}_fold{fold}"
    if Run(path).last_checkpoint is None:
        print(f"no run given: training {path} with 04_train's defaults ...")
        run_notebook("04_train", path / "04_train.ipynb",
                     {"fold": fold, "data_root": os.fspath(data_root)})
    return Run(path)
