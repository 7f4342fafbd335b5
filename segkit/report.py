"""Compare training runs (08_report): one table of every run, curves and per-class IoU.

Example:
    >>> table = runs_table()                        # every run under outputs/runs    # doctest: +SKIP
    >>> table.sort_values("best_mIoU", ascending=False).head()                         # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from segkit.errors import SegkitError
from segkit.paths import outputs_dir
from segkit.train import last_checkpoint, read_scalars, run_parameters, summarize

# the parameters worth a column when runs are compared side by side
KEY_PARAMETERS = ("model", "fold", "image_size", "crop_size", "batch_size", "iters", "lr",
                  "loss", "schedule", "amp", "averaging", "seed", "extra_train_files",
                  "load_from")


def find_runs(runs_root: str | os.PathLike | None = None) -> list[Path]:
    """Run folders (with at least one checkpoint) under `runs_root` (default outputs/runs)."""
    root = Path(runs_root) if runs_root else outputs_dir() / "runs"
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and last_checkpoint(p) is not None)


def runs_table(runs: list[str | os.PathLike] | None = None) -> pd.DataFrame:
    """One row per run: key parameters, best val mIoU, per-class IoU, time, checkpoint."""
    rows = []
    for run_dir in runs if runs is not None else find_runs():
        run_dir = Path(run_dir)
        try:
            params = run_parameters(run_dir)
        except SegkitError:  # a run copied without its params.json still has scores
            params = {}
        result = summarize(run_dir)
        row = {"run": run_dir.name}
        for key in KEY_PARAMETERS:
            value = params.get(key)
            row[key] = ", ".join(map(str, value)) if isinstance(value, list) else value
        row.update(best_mIoU=result.best_miou, minutes=result.seconds / 60,
                   checkpoint=str(result.best_checkpoint or result.last_checkpoint),
                   path=str(run_dir))
        row.update({f"IoU {k}": v for k, v in result.per_class_iou.items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values(["best_mIoU", "run"], ascending=[False, True])
    return table.reset_index(drop=True)


def curves(runs: list[str | os.PathLike]) -> pd.DataFrame:
    """Long table of (run, step, kind, loss, mIoU) for plotting several runs together."""
    frames = []
    for run_dir in runs:
        df = read_scalars(run_dir)
        keep = [c for c in ("step", "kind", "loss", "mIoU") if c in df.columns]
        frames.append(df[keep].assign(run=Path(run_dir).name))
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


def val_predictions(run_dir: str | os.PathLike, checkpoint: str = "best") -> Path:
    """The run's validation prediction folder (outputs/predictions/<run>/val, as 05 writes
    it), predicting it first if it is missing."""
    from segkit.ensemble import predict_run
    from segkit.predict import run_data

    root, val_file = run_data(run_dir)
    return predict_run(run_dir, val_file, root, "val", checkpoint=checkpoint,
                       save_full_labels=True)
