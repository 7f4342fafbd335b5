"""The final model of a recipe: how long to train it on every training image (fold=all).

Cross-validation trains a recipe on each fold's training part and keeps the checkpoint that
validated best; the final model trains the same recipe on all the images, with no validation
to pick a checkpoint. Its iteration count comes from the folds (`final_iterations`):

    iters = round(mean_k(best_iteration_k) * n_all / mean_k(n_train_k))

best_iteration_k: the iteration of fold k's best checkpoint (`best_mIoU_iter_N.pth`, else the
best logged validation); n_train_k: the images of fold k's training file; n_all: the images
the final model trains on. The scaling keeps the number of epochs (passes over the data) that
served the folds best; the means are taken first, so a small fold (a short sequence held out)
does not dominate. The schedule (warm-up, then poly, cosine, ...) stretches over the new count
as over any `iters`.

Example:
    final = final_iterations(["lite0_fold0", "lite0_fold1", "lite0_fold2"], n_all=468)
    print(final.rule)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from segkit.core.errors import ParameterError, SegkitError


@dataclass(frozen=True)
class FinalIterations:
    """iters: the final model's iteration count; per_fold: (run, best iteration, training
    images) of each fold; n_all: the final model's training images; rule: the computation in
    words and numbers (what 04_train and `segkit train` print)."""

    iters: int
    n_all: int
    per_fold: tuple
    rule: str


def best_iteration(run) -> int:
    """The iteration of a run's best checkpoint (best_mIoU_iter_N.pth), else of its best
    logged validation."""
    from segkit.results.runs import Run

    run = Run.open(run)
    if run.best_checkpoint is not None:
        return int(run.best_checkpoint.stem.rsplit("_", 1)[-1])
    scalars = run.scalars()
    val = scalars[scalars["kind"] == "val"] if "kind" in scalars else scalars.iloc[0:0]
    if not len(val):
        raise SegkitError(f"{run.path}: no best checkpoint and no validation logged: its best "
                          "iteration is unknown (iters_from takes cross-validation runs)")
    return int(val.loc[val["mIoU"].idxmax(), "step"])


def final_iterations(cv_runs: Sequence[str | os.PathLike], n_all: int) -> FinalIterations:
    """The iteration count of a final model on `n_all` images from a recipe's CV runs (the
    rule in the module docstring)."""
    from segkit.coco.files import load_coco
    from segkit.results.runs import Run

    if not cv_runs:
        raise ParameterError("iters_from: no cross-validation runs given")
    if not isinstance(n_all, int) or n_all < 1:
        raise ParameterError(f"n_all={n_all!r}: expected a positive number of images")
    rows = []
    for run in map(Run.open, cv_runs):
        if run.parameters.get("fold") == "all":
            raise SegkitError(f"{run.path}: a full-data run (fold=all) has no validated best "
                              "checkpoint; iters_from takes the recipe's fold runs")
        n_train = len(load_coco(run.fold_files()[0]).images)
        rows.append((run.name, best_iteration(run), n_train))
    best = sum(r[1] for r in rows) / len(rows)
    n_train = sum(r[2] for r in rows) / len(rows)
    iters = max(1, round(best * n_all / n_train))
    rule = (f"final iterations = mean best iteration x n_all / mean n_train, over {len(rows)} "
            f"folds = mean({', '.join(str(r[1]) for r in rows)}) x {n_all} / "
            f"mean({', '.join(str(r[2]) for r in rows)}) = {best:g} x {n_all} / {n_train:g} "
            f"= {iters}")
    return FinalIterations(iters, n_all, tuple(rows), rule)
