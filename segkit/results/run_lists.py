"""Sets of run folders: every run under outputs/runs (optionally of one fold), and the one
validation file a set of runs shares (or a refusal naming the run that differs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import (
    outputs_dir,
)
from segkit.results.runs import Run


def find_runs(runs_root: str | os.PathLike | None = None, fold: int | None = None,
              checkpoint: str = "last") -> list[Run]:
    """Run folders under `runs_root` (default outputs/runs) holding the `checkpoint`, sorted by
    name; with `fold`, only those validated on that fold's file in outputs/splits."""
    from segkit.folds.files import fold_files

    root = Path(runs_root) if runs_root else outputs_dir() / "runs"
    if not root.is_dir():
        return []
    wanted = None
    if fold is not None:
        try:
            wanted = fold_files(outputs_dir() / "splits", int(fold))[1].resolve()
        except ParameterError:
            return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        run = Run(folder)
        try:
            run.checkpoint(checkpoint)
            val = run.data()[1]  # None: a full-data run without a holdout
            if wanted is None or (val is not None and val.resolve() == wanted):
                found.append(run)
        except SegkitError:
            continue
    return found


def common_validation(runs: Sequence[str | os.PathLike | Run]) -> tuple[Path, Path]:
    """(data root, validation COCO file) shared by all the runs; runs validated on different
    files cannot be compared on one: a SegkitError names the run."""
    if not runs:
        raise ParameterError("no run folders given")
    opened = [Run.open(r) for r in runs]
    root, val = opened[0].data()
    for run in opened:
        other = run.data()[1]
        if other is None:
            raise SegkitError(f"{run.path}: a full-data run (fold=all) without a holdout_file "
                              "has no validation file to compare runs on")
        if other.resolve() != val.resolve():
            raise SegkitError(f"{run.path}: validated on {other}, but {opened[0].path} on "
                              f"{val}; ensembles compare runs of the same fold")
    return root, val
