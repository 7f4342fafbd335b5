"""Compare training runs (08_report): one table of every run, curves and per-class IoU.

Example:
    table = runs_table()                        # every run under outputs/runs
    table.sort_values("best_mIoU", ascending=False).head()
"""

from __future__ import annotations

import os

import pandas as pd

from segkit.core.errors import SegkitError
from segkit.results.run_lists import find_runs
from segkit.results.runs import Run

# the parameters worth a column when runs are compared side by side
KEY_PARAMETERS = ("model", "fold", "image_size", "crop_size", "batch_size", "iters",
                  "optimizer", "lr", "loss", "schedule", "amp", "averaging", "seed",
                  "extra_train_files", "load_from")
# what a run's config really trained (summary.json's `trained`) replaces the parameters: all of
# it in whole mode (config_mode="whole" ignores segkit's sizes and schedule), else the
# iterations (`epochs` turns into them)
TRAINED_KEYS = ("iters", "image_size", "crop_size", "batch_size", "optimizer", "lr", "schedule")


def _cell(value):
    if isinstance(value, list) and len(value) == 2 and value[0] == value[1]:
        return value[0]  # a square size as one number, as segkit's parameters give it
    return ", ".join(map(str, value)) if isinstance(value, list) else value


def _trained_values(params: dict, trained: dict) -> dict:
    if params.get("config_mode") == "whole":
        values = {k: trained.get(k) for k in TRAINED_KEYS}
        if "epochs" in trained:
            values["iters"] = f"{trained['epochs']} epochs"
        return values
    return {"iters": trained["iters"]} if "iters" in trained else {}


def class_table_label(names) -> str:
    """A short name of a class table: its size and first and last class."""
    names = list(names)
    if not names:
        return "unknown"
    return f"{len(names)}: {names[0]} ... {names[-1]}" if len(names) > 2 else \
        f"{len(names)}: {', '.join(names)}"


def runs_table(runs: list[str | os.PathLike] | None = None) -> pd.DataFrame:
    """One row per run: key parameters (what the config really trained where the run recorded
    it), best val mIoU, per-class IoU, time, checkpoint, and its class table (`classes`).

    Runs of different class tables are not comparable by mIoU: the rows are grouped by class
    table, the most common first (ties: the one of the best run), each group by best mIoU;
    `by_class_table` splits them."""
    rows, tables = [], []
    for run in runs if runs is not None else find_runs():
        run = Run.open(run)
        try:
            params = run.parameters
        except SegkitError:  # a run copied without its params.json still has scores
            params = {}
        result = run.summary()
        row = {"run": run.name}
        values = {**params, **_trained_values(params, run.trained)}
        for key in KEY_PARAMETERS:
            row[key] = _cell(values.get(key))
        row.update(best_mIoU=result.best_miou, minutes=result.seconds / 60,
                   checkpoint=str(result.best_checkpoint or result.last_checkpoint),
                   path=str(run.path), classes=class_table_label(result.per_class_iou.index))
        row.update({f"IoU {k}": v for k, v in result.per_class_iou.items()})
        rows.append(row)
        tables.append(tuple(result.per_class_iou.index))
    table = pd.DataFrame(rows)
    if len(table):
        table["class_group"] = groups = _group_order(tables, table["best_mIoU"].tolist())
        table = table.sort_values(["class_group", "best_mIoU", "run"],
                                  ascending=[True, False, True])
        table = table.reset_index(drop=True)
        table.attrs["class_tables"] = {g: list(t) for g, t in zip(groups, tables)}
        return table
    return table.reset_index(drop=True)


def _group_order(tables: list[tuple], scores: list[float]) -> list[int]:
    """Each run's class-table group: 0 for the most common table, then 1, ..."""
    import math

    counts: dict[tuple, int] = {}
    best: dict[tuple, float] = {}
    for names, score in zip(tables, scores):
        counts[names] = counts.get(names, 0) + 1
        if not math.isnan(score):
            best[names] = max(best.get(names, -1.0), score)
    order = sorted(counts, key=lambda t: (-counts[t], -best.get(t, -1.0), t))
    return [order.index(t) for t in tables]


def by_class_table(table: pd.DataFrame) -> list[pd.DataFrame]:
    """`runs_table` split by class table, the main group first: mIoU and per-class IoU compare
    only within a group (each keeps only its own classes' IoU columns)."""
    if not len(table) or "class_group" not in table:
        return [table]
    groups = []
    names = table.attrs.get("class_tables", {})
    for number, group in table.groupby("class_group", sort=True):
        own = {f"IoU {n}" for n in names[number]} if number in names else \
            {c for c in group.columns if c.startswith("IoU ") and group[c].notna().any()}
        other = [c for c in group.columns if c.startswith("IoU ") and c not in own]
        groups.append(group.drop(columns=other).reset_index(drop=True))
    return groups


def curves(runs: list[str | os.PathLike]) -> pd.DataFrame:
    """Long table of (run, step, kind, loss, lr, mIoU) for plotting several runs together
    (segkit.viz.plot_training)."""
    frames = []
    for run in map(Run.open, runs):
        df = run.scalars()
        keep = [c for c in ("step", "kind", "loss", "lr", "mIoU") if c in df.columns]
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


