"""Pictures for the notebooks: palette overlays, image grids, confusion heatmaps, curves, bars.

Every function returns a matplotlib Figure or Axes and never calls `plt.show()`: notebooks
display what they get, scripts save it (`fig.savefig(...)`). Importing this module does not
choose a matplotlib backend; headless runs (papermill, pytest) pick Agg by themselves.

Example:
    >>> from segkit.core.classes import TRASH
    >>> import numpy as np
    >>> image = np.zeros((4, 4, 3), np.uint8); label = np.full((4, 4), 9, np.uint8)
    >>> overlay(image, label, TRASH, alpha=1.0)[0, 0].tolist()
    [64, 64, 128]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from segkit.coco.files import Coco, load_coco, read_image
from segkit.core.classes import IGNORE_INDEX, ClassTable
from segkit.core.errors import ParameterError
from segkit.data.copy_paste import CopyPasteResult


def overlay(image: np.ndarray, label: np.ndarray, classes: ClassTable, alpha: float = 0.5
            ) -> np.ndarray:
    """Blend the palette colours of a label map over an RGB image; returns RGB uint8.

    Background (0) is painted too (black, so it darkens), ignore pixels (255) are left as they
    are. `alpha` is the weight of the palette colour (0 = image only, 1 = colours only).

    Example:
        overlay(image, label, TRASH, alpha=0.4)
    """
    image = np.asarray(image)
    label = np.asarray(label)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ParameterError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if label.shape != image.shape[:2]:
        raise ParameterError(f"label shape {label.shape} does not match image {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ParameterError(f"alpha must be between 0 and 1, got {alpha}")
    colours = classes.palette_array()[label].astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    unpainted = label == IGNORE_INDEX
    out[unpainted] = image[unpainted]
    return out


def legend_handles(classes: ClassTable, present: Sequence[int] | None = None) -> list:
    """matplotlib patches, one per class (or per index in `present`), in the palette colours.

    Example:
        ax.legend(handles=legend_handles(TRASH, present=[0, 9]))
    """
    from matplotlib.patches import Patch

    indices = range(len(classes)) if present is None else sorted({int(i) for i in present})
    handles = []
    for i in indices:
        if i == IGNORE_INDEX:
            handles.append(Patch(facecolor="white", edgecolor="grey", label="ignore"))
        elif 0 <= i < len(classes):
            handles.append(Patch(facecolor=np.array(classes.palette[i]) / 255.0,
                                 edgecolor="grey", label=classes.names[i]))
        else:
            raise ParameterError(f"class index {i} in present is outside 0..{len(classes) - 1}")
    return handles


def show_grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] | None = None,
              row_titles: Sequence[str] | None = None, size: float = 3.0):
    """A figure with one row per entry of `rows` (each a list of RGB images, same length).

    `titles` name the columns (shown over the first row), `row_titles` label each row.

    Example:
        fig = show_grid([[img, overlay(img, lab, TRASH)]], titles=["image", "truth"])
    """
    import matplotlib.pyplot as plt

    if not rows or not all(len(r) for r in rows):
        raise ParameterError("show_grid needs at least one row with at least one image")
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    if titles is not None and len(titles) != n_cols:
        raise ParameterError(f"titles has {len(titles)} entries for {n_cols} columns")
    if row_titles is not None and len(row_titles) != n_rows:
        raise ParameterError(f"row_titles has {len(row_titles)} entries for {n_rows} rows")
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(row):
                ax.imshow(row[c])
            if r == 0 and titles is not None:
                ax.set_title(titles[c])
            if c == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[r])
    fig.tight_layout()
    return fig


def show_samples(data_root: str | os.PathLike, coco, classes: ClassTable,
                 image_ids: Sequence[int],
                 predictions: Mapping[int, np.ndarray] | None = None):
    """Image, ground-truth overlay and (optionally) prediction overlay for each image id.

    `predictions` maps image id -> label map of the image's size. The legend lists the classes
    present in what is shown.

    Example:
        fig = show_samples(root, coco, TRASH, [0, 5], predictions={0: pred0, 5: pred5})
    """
    from segkit.coco.files import label_map, read_image

    if not image_ids:
        raise ParameterError("show_samples needs at least one image id")
    coco.check_image_ids(image_ids)
    missing = [i for i in image_ids if predictions is not None and i not in predictions]
    if missing:
        raise ParameterError(f"predictions has no label map for image ids {missing[:5]}")
    rows, row_titles, present = [], [], set()
    for image_id in image_ids:
        info = coco.image_by_id[image_id]
        image = read_image(data_root, info)
        truth = label_map(coco, info, classes)
        row = [image, overlay(image, truth, classes)]
        present.update(np.unique(truth).tolist())
        if predictions is not None:
            pred = np.asarray(predictions[image_id])
            row.append(overlay(image, pred, classes))
            present.update(np.unique(pred).tolist())
        rows.append(row)
        row_titles.append(str(info["file_name"]))
    titles = ["image", "truth"] + (["prediction"] if predictions is not None else [])
    fig = show_grid(rows, titles=titles, row_titles=row_titles)
    fig.legend(handles=legend_handles(classes, present), loc="lower center",
               ncol=min(6, len(present)), frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.subplots_adjust(bottom=0.12 if len(rows) < 3 else 0.06)
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a figure as PNG atomically (tight bounding box); returns the path.

    Example:
        save_figure(show_grid([[img]]), "outputs/eda/grid.png")
    """
    from segkit.core.paths import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def plot_confusion(cm: np.ndarray, classes: ClassTable, normalize: bool = True, ax=None):
    """A seaborn heatmap of a (C, C) confusion matrix (rows truth, columns prediction).

    With `normalize`, each row is divided by its sum (rows with no truth pixels stay 0).

    Example:
        ax = plot_confusion(ConfusionMatrix(11).matrix, TRASH)
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    cm = np.asarray(cm, np.float64)
    n = len(classes)
    if cm.shape != (n, n):
        raise ParameterError(f"confusion matrix shape {cm.shape} does not match {n} classes")
    if normalize:
        totals = cm.sum(1, keepdims=True)
        cm = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.6 * n + 3, 0.6 * n + 2))
    sns.heatmap(cm, ax=ax, annot=n <= 20, fmt=".2f" if normalize else ".0f", cmap="Blues",
                xticklabels=classes.names, yticklabels=classes.names, square=True,
                vmin=0, vmax=1 if normalize else None, cbar=True,
                annot_kws={"fontsize": 7})
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    return ax


def plot_curves(df, x: str, ys: Sequence[str], ax=None, title: str | None = None):
    """One line per column in `ys` against column `x` of a DataFrame; NaN points are skipped
    (training logs hold validation values only every few iterations).

    Example:
        plot_curves(log, "iter", ["loss", "mIoU"], title="fold 0")
    """
    import matplotlib.pyplot as plt

    columns = [x, *ys]
    absent = [c for c in columns if c not in df.columns]
    if absent:
        raise ParameterError(f"columns {absent} not in the table; it has {list(df.columns)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for y in ys:
        part = df[[x, y]].dropna()
        ax.plot(part[x], part[y], marker="o" if len(part) < 30 else None, label=y)
    ax.set_xlabel(x)
    ax.legend()
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return ax


def plot_training(scalars, val_columns: Sequence[str] = ("mIoU",), run_column: str = "run",
                  figsize=(16, 4)):
    """Training loss, learning rate and validation scores side by side, against the step: one
    run's scalars (segkit.results.runs.read_scalars) or several runs' long table (a `run`
    column, segkit.results.report.curves), one line per run. The lr is the first parameter
    group's as mmengine logs it (the backbone's under backbone_lr_mult); its axis is
    logarithmic when it spans more than a factor 100 (warm-ups start at lr / 1000).

    Example:
        fig = plot_training(run.scalars(), val_columns=["mIoU", "aAcc"])
    """
    import matplotlib.pyplot as plt

    if "kind" not in scalars.columns or "step" not in scalars.columns:
        raise ParameterError(f"scalars need the columns step and kind (train / val); they "
                             f"have {list(scalars.columns)}")
    fig, axes = plt.subplots(1, 3, figsize=figsize)
    runs = list(scalars.groupby(run_column, sort=False)) if run_column in scalars.columns \
        else [(None, scalars)]
    panels = ((axes[0], "train", ["loss"], "training loss"),
              (axes[1], "train", ["lr"], "learning rate"),
              (axes[2], "val", list(val_columns), "validation"))
    for ax, kind, columns, title in panels:
        drawn = []
        for name, df in runs:
            part = df[df["kind"] == kind]
            for column in columns:
                if column not in part.columns:
                    continue
                points = part[["step", column]].dropna()
                if not len(points):
                    continue
                label = " ".join(str(t) for t in (name, column if len(columns) > 1 else None)
                                 if t is not None) or column
                ax.plot(points["step"], points[column], label=label,
                        marker="o" if len(points) < 30 else None)
                drawn.append(points[column])
        if not drawn:
            ax.text(0.5, 0.5, f"no {', '.join(columns)} logged", ha="center", va="center",
                    transform=ax.transAxes)
        else:
            values = np.concatenate([d.to_numpy(float) for d in drawn])
            positive = values[values > 0]
            if columns == ["lr"] and len(positive) and positive.max() > 100 * positive.min():
                ax.set_yscale("log")
            if len(runs) > 1 or len(columns) > 1:
                ax.legend()
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_class_bars(df, ax=None):
    """Grouped bars: one group per row (class), one bar per column (e.g. runs or folds).

    Example:
        plot_class_bars(pd.DataFrame({"fold 0": iou0, "fold 1": iou1}, index=TRASH.names))
    """
    import matplotlib.pyplot as plt

    if df.empty:
        raise ParameterError("plot_class_bars needs a non-empty table")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(df) * max(1, len(df.columns))), 4))
    df.plot.bar(ax=ax, width=0.8)
    ax.set_xticklabels([str(i) for i in df.index], rotation=45, ha="right")
    ax.grid(axis="y", alpha=0.3)
    if len(df.columns) == 1 and ax.get_legend() is not None:
        ax.get_legend().remove()  # one column: the legend would only repeat the axis title
    return ax


def show_disagreement(rows: Sequence[tuple[str, np.ndarray, np.ndarray]], classes: ClassTable,
                      names: Sequence[str]):
    """One row per image: the image, each model's label map over it, and the per-pixel
    disagreement (share of models differing from their vote). `rows` are (title, RGB image,
    label maps (M, H, W)), as `segkit.predict.ensemble.disagreement_examples` returns them."""
    import matplotlib.pyplot as plt

    from segkit.submission.vote import disagreement

    if not rows:
        raise ParameterError("show_disagreement needs at least one image")
    count = rows[0][2].shape[0]
    if len(names) != count:
        raise ParameterError(f"{len(names)} names for {count} models")
    fig, axes = plt.subplots(len(rows), count + 2, figsize=(3 * (count + 2), 3 * len(rows)),
                             squeeze=False)
    present, shown = set(), None
    for r, (title, image, labels) in enumerate(rows):
        panels = [image] + [overlay(image, lab, classes, alpha=0.6) for lab in labels]
        present.update(np.unique(labels).tolist())
        for c, (panel, name) in enumerate(zip(panels, ["image", *names], strict=True)):
            axes[r, c].imshow(panel)
            axes[r, c].set_title(name if r == 0 else "")
        shown = axes[r, -1].imshow(disagreement(labels), cmap="magma", vmin=0, vmax=1)
        axes[r, -1].set_title("disagreement" if r == 0 else "")
        axes[r, 0].set_ylabel(title)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(shown, ax=axes[:, -1].tolist(), fraction=0.05, label="share of models off the vote")
    fig.legend(handles=legend_handles(classes, sorted(present)), loc="lower center",
               ncol=min(6, len(present)), frameon=False)
    return fig


def show_copy_paste(train: Coco, data_root: str | os.PathLike, result: CopyPasteResult, n: int = 4):
    """A figure with, per generated image, its target before (image, labels) and after
    (image, labels); the legend lists the classes shown.

    Example:
        show_copy_paste(train, "data", result, n=4)
    """
    from segkit.coco.files import label_map
    from segkit.viz import legend_handles, overlay, show_grid

    if n < 1:
        raise ParameterError(f"n must be at least 1, got {n}")
    generated = load_coco(result.coco_file)
    table = ClassTable.for_coco(train.categories)
    firsts = result.pasted.drop_duplicates("image_id").head(n)
    rows, titles, present = [], [], set()
    for image_id, target_id in zip(firsts["image_id"], firsts["target_image_id"]):
        target, new = train.image_by_id[int(target_id)], generated.image_by_id[int(image_id)]
        before, after = label_map(train, target, table), label_map(generated, new, table)
        old_rgb, new_rgb = read_image(data_root, target), read_image(result.data_root, new)
        rows.append([old_rgb, overlay(old_rgb, before, table), new_rgb,
                     overlay(new_rgb, after, table)])
        titles.append(f"{Path(new['file_name']).name}\nfrom {Path(target['file_name']).name}")
        present.update(np.unique(before).tolist() + np.unique(after).tolist())
    fig = show_grid(rows, titles=["target", "target labels", "pasted", "pasted labels"],
                    row_titles=titles)
    fig.legend(handles=legend_handles(table, present), loc="lower center",
               ncol=min(6, len(present)), frameon=False)
    fig.subplots_adjust(bottom=0.1)
    return fig


def plot_leaderboard(table, ax=None):
    """Public leaderboard score against the local score (OOF or validation) of each
    submission (segkit.submission.leaderboard_table), named by its note or file, with the
    diagonal where both agree.

    Example:
        >>> import pandas as pd
        >>> table = pd.DataFrame({"local": [0.70, 0.72], "leaderboard": [0.69, 0.73],
        ...                       "note": ["fold 0", ""], "submission": ["a.csv", "b.csv"]})
        >>> plot_leaderboard(table).get_xlabel()
        'local score (OOF or validation mIoU)'
    """
    import matplotlib.pyplot as plt

    if len(table) == 0:
        raise ParameterError("no leaderboard scores to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(table["local"], table["leaderboard"])
    for local, score, note, submission in zip(table["local"], table["leaderboard"],
                                              table["note"], table["submission"]):
        ax.annotate(note or Path(submission).name, (local, score), fontsize=8)
    low = float(min(table["local"].min(), table["leaderboard"].min()))
    high = float(max(table["local"].max(), table["leaderboard"].max()))
    ax.plot([low, high], [low, high], "--", color="grey")
    ax.set_xlabel("local score (OOF or validation mIoU)")
    ax.set_ylabel("public leaderboard mIoU")
    return ax
