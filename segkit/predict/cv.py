"""Cross-validation: the out-of-fold (OOF) score of a recipe's fold runs, fold ensembles, and
the CV table of recipes.

A recipe is a set of runs that differ only in their fold: run names equal but for `fold<k>`
(`lite0_fold0`, `lite0_fold1`, ... are the recipe `lite0_fold*`). Out of fold: each fold's run
predicts its own validation images (`predict_run(run, "val", ...)`), and the folds' predictions
together are one prediction of every training image by a model that did not train on it. Its
mIoU (one confusion matrix over all images, at the stored probabilities' size, 256x256 by
default, as the leaderboard scores) is the recipe's honest score; per-fold mIoU come from the
same matrices (their mean and sample standard deviation say how much the folds disagree).
Runs whose validation files lie in different folders (different split files) or share images
(the same fold twice, overlapping folds) are refused.

Example:
    oof = out_of_fold(["lite0_fold0", "lite0_fold1", "lite0_fold2"])
    oof.miou, oof.per_fold
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.coco.files import load_coco
from segkit.core.classes import IGNORE_INDEX, ClassTable
from segkit.core.errors import ParameterError, SegkitError
from segkit.core.metrics import confusion_matrix, miou, per_class_iou
from segkit.core.paths import atomic_folder, distinct_paths, outputs_dir
from segkit.predict.options import PredictOptions
from segkit.predict.writing import predict_run
from segkit.results.predictions import PredictionFolder, write_prediction_meta
from segkit.results.runs import Run
from segkit.submission.vote import argmax_classes

_FOLD = re.compile(r"fold(\d+|all)")


def recipe_name(run: str | os.PathLike | Run) -> str:
    """`lite0_fold3` -> `lite0_fold*`: the name shared by a recipe's fold runs (and by its
    full-data run, `lite0_foldall`)."""
    name = run.name if isinstance(run, Run) else Path(os.fspath(run)).name
    return _FOLD.sub("fold*", name)


def recipes(runs: Sequence[str | os.PathLike | Run]) -> dict[str, list[Run]]:
    """Runs grouped by recipe (see `recipe_name`), in the order first seen; each recipe's runs
    sorted by name."""
    groups: dict[str, list[Run]] = {}
    for run in map(Run.open, runs):
        groups.setdefault(recipe_name(run), []).append(run)
    return {k: sorted(v, key=lambda r: r.name) for k, v in groups.items()}


def checkpoint_tag(run: Run, checkpoint) -> str:
    """outputs/predictions/<tag>/: the run's name, with `@<checkpoint>` for any but `best`."""
    text = str(checkpoint)
    return run.name if text == "best" else f"{run.name}@{Path(text).stem}"


def check_folds(runs: Sequence[str | os.PathLike | Run]) -> list[tuple[Run, Path]]:
    """(run, validation file) of fold runs that can be merged out of fold, ordered by their
    validation file: one split folder, one data root, no image in two validation files."""
    opened = [Run.open(r) for r in runs]
    if not opened:
        raise ParameterError("no runs given")
    distinct_paths([run.path for run in opened], "runs")  # one run given twice
    for run in opened:
        if run.full_data:
            raise SegkitError(f"{run.path}: a full-data run (fold=all) trained on every image, "
                              "so it has no out-of-fold prediction; give the recipe's fold runs")
    folds = sorted(((run, run.data()[1]) for run in opened), key=lambda f: (str(f[1]), f[0].name))
    first, first_val = folds[0]
    seen: dict = {}
    for run, val in folds:
        if val.resolve().parent != first_val.resolve().parent:
            raise SegkitError(f"{run.path}: validated on {val}, but {first.path} on {first_val}: "
                              "folds of different split files cannot be merged out of fold")
        if run.data_root.resolve() != first.data_root.resolve():
            raise SegkitError(f"{run.path}: trained on data in {run.data_root}, but {first.path} "
                              f"on {first.data_root}")
        for img in load_coco(val).images:
            if img["id"] in seen:
                other = seen[img["id"]]
                raise SegkitError(f"{run.path} and {other.path} both validate on image id "
                                  f"{img['id']} ({img['file_name']}, {val}): their folds overlap "
                                  "(the same fold twice?); give one run per fold")
            seen[img["id"]] = run
    return folds


def _confusion(folder: PredictionFolder, coco, classes: ClassTable) -> np.ndarray:
    from segkit.predict.ensemble import truth_at_size

    truth = truth_at_size(coco, classes, folder.size)
    cm = np.zeros((classes.num_classes, classes.num_classes), np.int64)
    for img in coco.images:
        pred = argmax_classes(folder.probs(img["id"]))
        cm += confusion_matrix(pred, truth[img["id"]], classes.num_classes, IGNORE_INDEX)
    return cm


@dataclass
class OutOfFold:
    """A recipe's out-of-fold result. folder: the merged prediction folder (outputs/oof/<name>);
    per_fold: run, validation file, images, mIoU; truth: label maps at the folder's size."""

    name: str
    runs: list[Run]
    folder: PredictionFolder
    confusion: np.ndarray
    classes: list[str]
    per_fold: pd.DataFrame
    truth: dict = field(repr=False, default_factory=dict)
    split_images: int | None = None  # images of the runs' split (None: not known)
    split_folds: int | None = None

    @property
    def images(self) -> int:
        return int(self.per_fold["images"].sum())

    @property
    def coverage(self) -> str:
        """"N of M images" (N alone when the split's size is not known)."""
        return f"{self.images} of {self.split_images} images" if self.split_images \
            else f"{self.images} images"

    @property
    def partial(self) -> bool:
        """Whether the folds leave images of their split out (`out_of_fold(partial=True)`)."""
        return bool(self.split_images) and self.images < self.split_images

    @property
    def miou(self) -> float:
        return miou(self.confusion)

    @property
    def per_class(self) -> pd.Series:
        return pd.Series(per_class_iou(self.confusion), index=self.classes, name="IoU")

    @property
    def mean(self) -> float:
        return float(self.per_fold["mIoU"].mean())

    @property
    def std(self) -> float:
        """Sample standard deviation of the per-fold mIoU (0 with one fold)."""
        return float(self.per_fold["mIoU"].std(ddof=1)) if len(self.per_fold) > 1 else 0.0

    def summary(self) -> dict:
        return {"recipe": self.name, "folds": len(self.per_fold),
                "images": self.images, "split images": self.split_images,
                "coverage": self.coverage, "partial": self.partial, "mean mIoU": self.mean,
                "std": self.std, "OOF mIoU": self.miou,
                "per-fold mIoU": ", ".join(f"{v:.4f}" for v in self.per_fold["mIoU"])}

    def report(self) -> str:
        """What `python -m segkit oof` prints."""
        per_class = self.per_class.to_frame().to_string(float_format=lambda v: f"{v:.4f}",
                                                        na_rep="absent")
        folds = self.per_fold.to_string(index=False, float_format=lambda v: f"{v:.4f}")
        folds_of = f" of {self.split_folds}" if self.split_folds else ""
        partial = " (partial: the other images of the split are not scored)" \
            if self.partial else ""
        return "\n".join([f"{self.name}: {len(self.runs)}{folds_of} folds, {self.coverage} "
                          f"out of fold{partial} ({self.folder.path})", "", folds, "",
                          f"per-fold mIoU: mean {self.mean:.4f} +- {self.std:.4f} (std)", "",
                          per_class, "", f"OOF mIoU: {self.miou:.4f}"])


def fold_coverage(folds: list[tuple[Run, Path]]) -> tuple[int, int | None, int | None, list]:
    """(images the fold runs validate on, images of their split, folds of the split, the
    split's folds none of them validates on). The split as the first run's data.json records
    it, else as split.json / folds.csv in its validation file's folder say; (N, None, None,
    []) where nothing says (validation files that are not a fold set)."""
    from segkit.folds.files import FOLD_FILE, split_size

    covered = sum(len(load_coco(val).images) for _, val in folds)
    run, val = folds[0]
    recorded = (run.recorded_data() or {}).get("split") or {}
    if recorded.get("images") and recorded.get("n_splits"):
        size = int(recorded["n_splits"]), int(recorded["images"])
    else:
        size = split_size(val.parent)
    if size is None:
        return covered, None, None, []
    present = {int(m.group(1)) for _, v in folds if (m := FOLD_FILE.fullmatch(v.name))}
    return covered, size[1], size[0], [k for k in range(size[0]) if k not in present]


def _merge(name: str, folds: list[tuple[Run, Path, PredictionFolder]], out_dir: Path,
           score: str = "") -> None:
    """The folds' probabilities in one folder (hard links where the file system allows),
    images by id, meta.json naming every input, score.json (`score`); the folder is built
    beside `out_dir` and replaces it whole."""
    first = folds[0][2]
    images = sorted((img for _, _, f in folds for img in f.images), key=lambda i: i["id"])
    source = {img["id"]: f for _, _, f in folds for img in f.images}
    with atomic_folder(out_dir) as building:
        (building / "probs").mkdir()
        for img in images:
            src = source[img["id"]].path / "probs" / f"{img['id']}.npy"
            dst = building / "probs" / src.name
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        keep = {k: first.meta[k] for k in ("out_size", "reduction", "flips", "scales", "slide",
                                           "amp") if k in first.meta}
        write_prediction_meta(building, images, first.classes, first.size, "oof", **keep,
                              oof={"recipe": name,
                                   "runs": [str(run.path) for run, _, _ in folds],
                                   "val_files": [str(val) for _, val, _ in folds],
                                   "inputs": [str(f.path) for _, _, f in folds]})
        if score:
            (building / "score.json").write_text(score)


def out_of_fold(runs: Sequence[str | os.PathLike | Run],
                options: PredictOptions = PredictOptions(flips=("h",)), name: str = "",
                data_root=None, partial: bool = False) -> OutOfFold:
    """Merge the validation predictions of one recipe's fold runs at `options.checkpoint`
    (each predicted unless a matching folder is there) into outputs/oof/<name>/ and score them
    (module docstring). Writes score.json beside the probabilities.

    Folds that leave images of their split out (1 of 3 folds) are refused unless `partial`;
    then the result says "N of M images" (`OutOfFold.coverage`, score.json).
    """
    checkpoint = options.checkpoint
    folds = check_folds(runs)
    covered, split_images, split_folds, missing = fold_coverage(folds)
    if split_images and covered < split_images and not partial:
        lacking = f"; no run of fold {', '.join(map(str, missing))}" if missing else ""
        raise SegkitError(
            f"{recipe_name(folds[0][0])}: the runs validate on {len(folds)} of {split_folds} "
            f"folds, {covered} of {split_images} images of the split in {folds[0][1].parent}"
            f"{lacking}: an out-of-fold score needs every fold; train the missing folds, or "
            f"score these {covered} images alone with --partial (partial=True)")
    name = name or recipe_name(folds[0][0]).replace("fold*", "oof") + (
        "" if str(checkpoint) == "best" else f"@{Path(str(checkpoint)).stem}")
    merged, rows, total, classes = [], [], None, None
    truth: dict = {}
    for run, val in folds:
        out = outputs_dir() / "predictions" / checkpoint_tag(run, checkpoint) / "val"
        folder = predict_run(run, "val", options, coco_file=val, data_root=data_root,
                             out_dir=out)
        coco = load_coco(val)
        table = ClassTable.for_coco(coco.categories)
        if classes is not None and list(table.names) != list(classes.names):
            raise SegkitError(f"{val}: classes {list(table.names)} differ from the other folds' "
                              f"{list(classes.names)}")
        classes = table
        cm = _confusion(folder, coco, classes)
        from segkit.predict.ensemble import truth_at_size

        truth.update(truth_at_size(coco, classes, folder.size))
        total = cm if total is None else total + cm
        rows.append((run.name, val.name, len(coco.images), miou(cm)))
        merged.append((run, val, folder))
    out_dir = outputs_dir() / "oof" / name
    result = OutOfFold(name, [r for r, _ in folds], PredictionFolder(out_dir), total,
                       list(classes.names),
                       pd.DataFrame(rows, columns=["run", "val_file", "images", "mIoU"]), truth,
                       split_images, split_folds)
    score = {**result.summary(), "per_class": {k: (None if math.isnan(v) else v)
                                               for k, v in result.per_class.items()},
             "per_fold": result.per_fold.to_dict("records")}
    _merge(name, merged, out_dir, json.dumps(score, indent=1, default=str))
    return result


def cv_table(runs: Sequence[str | os.PathLike | Run],
             options: PredictOptions = PredictOptions(flips=("h",))) -> pd.DataFrame:
    """One row per recipe with at least two fold runs (08_report's CV table): folds, images,
    per-fold mIoU, their mean and std, and the OOF mIoU; best OOF first."""
    rows = []
    for recipe, members in recipes(runs).items():
        members = [r for r in members if not r.full_data]  # no OOF prediction
        if len(members) < 2:
            continue
        try:
            rows.append(out_of_fold(members, options).summary())
        except SegkitError as exc:  # not folds of one split: not a CV recipe
            print(f"{recipe}: not cross-validated ({exc})")
    table = pd.DataFrame(rows, columns=["recipe", "folds", "images", "mean mIoU", "std",
                                        "OOF mIoU", "per-fold mIoU"])
    return table.sort_values(["OOF mIoU", "recipe"], ascending=[False, True]) \
        .reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Ensembles of runs, or of recipes scored out of fold (07_ensemble)
# ---------------------------------------------------------------------------------------------


