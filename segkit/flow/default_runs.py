"""The runs a notebook works on when none is named: 04_train's default run of a fold, trained
first (by executing 04_train) when it is not there yet, so 05-07 run top to bottom on their own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from segkit.core.paths import outputs_dir
from segkit.flow.notebook import run_notebook


def runs_or_default(runs: str | os.PathLike | Sequence[str | os.PathLike] | None,
                    fold: int = 0, data_root: str | os.PathLike = "",
                    search: bool = False) -> list:
    """The runs a notebook parameter names (one folder or name, or a list). Empty means every
    run validated on `fold` when `search` (07), and 04_train's default run of the fold when
    there is none (trained first if absent)."""
    from segkit.results.run_lists import find_runs
    from segkit.results.runs import Run

    if isinstance(runs, (str, os.PathLike)):
        runs = [runs] if os.fspath(runs) else []
    opened = [Run.open(r) for r in runs or []]
    if not opened and search:
        opened = find_runs(fold=fold)
    return opened or [default_run(fold, data_root)]


def default_run(fold: int = 0, data_root: str | os.PathLike = ""):
    """04_train's default run of a fold, trained first (by executing 04_train with its
    defaults) when it is not there yet, so notebooks 05-07 run top to bottom on their own."""
    from segkit.recipe.parameters import BY_NAME
    from segkit.results.runs import Run

    path = outputs_dir() / "runs" / f"{BY_NAME['model'].default}_fold{fold}"
    if Run(path).last_checkpoint is None:
        print(f"no run given: training {path} with 04_train's defaults ...")
        run_notebook("04_train", path / "04_train.ipynb",
                     {"fold": fold, "data_root": os.fspath(data_root)})
    return Run(path)
