"""Compare training runs (08_report): one table of every run, curves and per-class IoU.

Example:
    table = runs_table()                        # every run under outputs/runs
    table.sort_values("best_mIoU", ascending=False).head()
"""

from __future__ import annotations

import os

import pandas as pd

from segkit.core.errors import SegkitError
from segkit.results.runs import Run, find_runs

# the parameters worth a column when runs are compared side by side
KEY_PARAMETERS = ("model", "fold", "image_size", "crop_size", "batch_size", "iters", "lr",
                  "loss", "schedule", "amp", "averaging", "seed", "extra_train_files",
                  "load_from")


def runs_table(runs: list[str | os.PathLike] | None = None) -> pd.DataFrame:
    """One row per run: key parameters, best val mIoU, per-class IoU, time, checkpoint."""
    rows = []
    for run in runs if runs is not None else find_runs():
        run = Run.open(run)
        try:
            params = run.parameters
        except SegkitError:  # a run copied without its params.json still has scores
            params = {}
        result = run.summary()
        row = {"run": run.name}
        for key in KEY_PARAMETERS:
            value = params.get(key)
            row[key] = ", ".join(map(str, value)) if isinstance(value, list) else value
        row.update(best_mIoU=result.best_miou, minutes=result.seconds / 60,
                   checkpoint=str(result.best_checkpoint or result.last_checkpoint),
                   path=str(run.path))
        row.update({f"IoU {k}": v for k, v in result.per_class_iou.items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values(["best_mIoU", "run"], ascending=[False, True])
    return table.reset_index(drop=True)


def curves(runs: list[str | os.PathLike]) -> pd.DataFrame:
    """Long table of (run, step, kind, loss, mIoU) for plotting several runs together."""
    frames = []
    for run in map(Run.open, runs):
        df = run.scalars()
        keep = [c for c in ("step", "kind", "loss", "mIoU") if c in df.columns]
        frames.append(df[keep].assign(run=run.name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def per_class_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per-class IoU, one column per run (for a grouped bar chart)."""
    cols = [c for c in table.columns if c.startswith("IoU ")]
    out = table.set_index("run")[cols].T
    out.index = [c[4:] for c in cols]
    return out


def confused_pairs(confusion, class_names, top: int = 10) -> pd.DataFrame:
    """The largest off-diagonal cells of a confusion matrix: which truth is taken for which,
    as a share of that truth class's pixels."""
    import numpy as np

    cm = np.asarray(confusion, float)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    rows = [(class_names[t], class_names[p], int(cm[t, p]), share[t, p])
            for t in range(len(cm)) for p in range(len(cm)) if t != p and cm[t, p] > 0]
    table = pd.DataFrame(rows, columns=["truth", "predicted as", "pixels", "share of truth"])
    return table.sort_values(["share of truth", "pixels"], ascending=False).head(top) \
        .reset_index(drop=True)


