"""Pseudo-label round 2: 04_train run again with round 1's parameters and the pseudo-label files
as extra train sources (06_pseudo_label).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from segkit.core.checks import check_choice
from segkit.core.errors import ParameterError

# Parameters of round 1 that round 2 never inherits: where it writes, how it starts, resuming.
_NOT_INHERITED = ("work_dir", "run_name", "resume", "load_from", "launcher", "extra_train_files")


ROUND2_STARTS = ("round1", "scratch")


def check_round2_start(start: str) -> str:
    """"round1" (start from round 1's checkpoint) or "scratch", else a ParameterError."""
    return check_choice("round2_start", start, ROUND2_STARTS)


def round2_parameters(run_dir: str | os.PathLike, pseudo_files: Sequence[str | os.PathLike],
                      run_name: str, start: str = "round1", checkpoint: str = "best",
                      notebook: str = "04_train", **overrides) -> dict:
    """Parameters for 04_train that repeat round 1's training (same data, folds, model and
    settings, from its params.json) with the pseudo-label files as extra train sources.

    start: "round1" loads round 1's `checkpoint` ("best" / "last" / a file) as the starting
    weights; "scratch" starts as round 1 did. Only parameters the notebook declares are
    passed; `overrides` (iters, ...) win, and one the notebook does not declare is a
    ParameterError.
    """
    from segkit.flow.notebook import notebook_parameters
    from segkit.recipe.parameters import defaults
    from segkit.results.runs import Run

    check_round2_start(start)
    run = Run.open(run_dir)
    # round 2 repeats round 1's folds: refused when its recorded train / val files changed since
    run.check_data(extra=False)
    declared = notebook_parameters(notebook)
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise ParameterError(f"{notebook} has no parameters {unknown}; it has: "
                             f"{', '.join(declared)}")
    # runs recorded before every parameter was: what they did not record was the default
    recorded = {**defaults(), **run.parameters}
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in recorded.items()
              if k in declared and k not in _NOT_INHERITED}
    params.update(overrides)
    params["extra_train_files"] = [str(p) for p in pseudo_files]
    params["run_name"] = run_name
    params["load_from"] = str(run.checkpoint(checkpoint)) if start == "round1" else ""
    return params


def train_round2(run_dir: str | os.PathLike, pseudo_files: Sequence[str | os.PathLike],
                 run_name: str, start: str = "round1", checkpoint: str = "best",
                 **overrides) -> Path:
    """Train round 2 by running 04_train with `round2_parameters`; returns its run folder
    (outputs/runs/<run_name>, the executed notebook inside).

    A finished run of that name trained with the same parameters is reused; one trained with
    others is a ParameterError (choose another run name), never overwritten.
    """
    from segkit.core.paths import outputs_dir
    from segkit.flow.notebook import run_notebook
    from segkit.predict.pseudo import check_pseudo_kept
    from segkit.results.runs import Run

    check_pseudo_kept(pseudo_files)  # a threshold that kept no pixel: nothing to train on
    params = round2_parameters(run_dir, pseudo_files, run_name, start, checkpoint, **overrides)
    work_dir = outputs_dir() / "runs" / run_name
    if Run(work_dir).last_checkpoint is not None:
        recorded = Run(work_dir).parameters
        differ = sorted(k for k in params if k != "run_name" and k in recorded
                        and recorded[k] != params[k] and not (recorded[k] is None and
                                                              params[k] == ""))
        if differ:
            raise ParameterError(f"{work_dir} already holds a round-2 run trained with other "
                                 f"{', '.join(differ)}: choose another round-2 run name")
        return work_dir
    run_notebook("04_train", work_dir / "04_train.ipynb", params)
    return work_dir
