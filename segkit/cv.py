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
    >>> oof = out_of_fold(["lite0_fold0", "lite0_fold1", "lite0_fold2"])   # doctest: +SKIP
    >>> oof.miou, oof.per_fold                                               # doctest: +SKIP
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

from segkit.classes import IGNORE_INDEX, ClassTable
from segkit.coco import load_coco
from segkit.errors import ParameterError, SegkitError
from segkit.metrics import confusion_matrix, miou, per_class_iou
from segkit.paths import atomic_folder, outputs_dir, write_text_atomic
from segkit.predict import PredictionFolder, predict_run, write_prediction_meta
from segkit.runs import Run
from segkit.vote import argmax_classes

_FOLD = re.compile(r"fold\d+")


def recipe_name(run: str | os.PathLike | Run) -> str:
    """`lite0_fold3` -> `lite0_fold*`: the name shared by a recipe's fold runs."""
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
    from segkit.ensemble import truth_at_size

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
                "images": int(self.per_fold["images"].sum()), "mean mIoU": self.mean,
                "std": self.std, "OOF mIoU": self.miou,
                "per-fold mIoU": ", ".join(f"{v:.4f}" for v in self.per_fold["mIoU"])}

    def report(self) -> str:
        """What `python -m segkit oof` prints."""
        per_class = self.per_class.to_frame().to_string(float_format=lambda v: f"{v:.4f}",
                                                        na_rep="absent")
        folds = self.per_fold.to_string(index=False, float_format=lambda v: f"{v:.4f}")
        return "\n".join([f"{self.name}: {len(self.runs)} folds, "
                          f"{int(self.per_fold['images'].sum())} images out of fold "
                          f"({self.folder.path})", "", folds, "",
                          f"per-fold mIoU: mean {self.mean:.4f} +- {self.std:.4f} (std)", "",
                          per_class, "", f"OOF mIoU: {self.miou:.4f}"])


def _merge(name: str, folds: list[tuple[Run, Path, PredictionFolder]], out_dir: Path) -> None:
    """The folds' probabilities in one folder (hard links where the file system allows),
    images by id, meta.json naming every input."""
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


def out_of_fold(runs: Sequence[str | os.PathLike | Run], checkpoint: str = "best",
                name: str = "", data_root=None, flips=("h",), scales=(1.0,),
                **options) -> OutOfFold:
    """Merge the validation predictions of one recipe's fold runs (each predicted unless a
    matching folder is there) into outputs/oof/<name>/ and score them (module docstring).
    Writes score.json beside the probabilities. `options` go to predict_run (slide, amp, ...).
    """
    folds = check_folds(runs)
    name = name or recipe_name(folds[0][0]).replace("fold*", "oof") + (
        "" if str(checkpoint) == "best" else f"@{Path(str(checkpoint)).stem}")
    merged, rows, total, classes = [], [], None, None
    truth: dict = {}
    for run, val in folds:
        out = outputs_dir() / "predictions" / checkpoint_tag(run, checkpoint) / "val"
        folder = predict_run(run, "val", val, data_root, out, checkpoint, flips=tuple(flips),
                             scales=tuple(scales), **options)
        coco = load_coco(val)
        table = ClassTable.for_coco(coco.categories)
        if classes is not None and list(table.names) != list(classes.names):
            raise SegkitError(f"{val}: classes {list(table.names)} differ from the other folds' "
                              f"{list(classes.names)}")
        classes = table
        cm = _confusion(folder, coco, classes)
        from segkit.ensemble import truth_at_size

        truth.update(truth_at_size(coco, classes, folder.size))
        total = cm if total is None else total + cm
        rows.append((run.name, val.name, len(coco.images), miou(cm)))
        merged.append((run, val, folder))
    out_dir = outputs_dir() / "oof" / name
    _merge(name, merged, out_dir)
    result = OutOfFold(name, [r for r, _ in folds], PredictionFolder(out_dir), total,
                       list(classes.names),
                       pd.DataFrame(rows, columns=["run", "val_file", "images", "mIoU"]), truth)
    score = {**result.summary(), "per_class": {k: (None if math.isnan(v) else v)
                                               for k, v in result.per_class.items()},
             "per_fold": result.per_fold.to_dict("records")}
    write_text_atomic(out_dir / "score.json", json.dumps(score, indent=1, default=str))
    return result


def cv_table(runs: Sequence[str | os.PathLike | Run], checkpoint: str = "best",
             flips=("h",)) -> pd.DataFrame:
    """One row per recipe with at least two fold runs (08_report's CV table): folds, images,
    per-fold mIoU, their mean and std, and the OOF mIoU; best OOF first."""
    rows = []
    for recipe, members in recipes(runs).items():
        if len(members) < 2:
            continue
        try:
            rows.append(out_of_fold(members, checkpoint, flips=flips).summary())
        except SegkitError as exc:  # not folds of one split: not a CV recipe
            print(f"{recipe}: not cross-validated ({exc})")
    table = pd.DataFrame(rows, columns=["recipe", "folds", "images", "mean mIoU", "std",
                                        "OOF mIoU", "per-fold mIoU"])
    return table.sort_values(["OOF mIoU", "recipe"], ascending=[False, True]) \
        .reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Ensembles of runs, or of recipes scored out of fold (07_ensemble)
# ---------------------------------------------------------------------------------------------

@dataclass
class EnsembleInputs:
    """What 07_ensemble votes. members: a run (runs of one fold) or a recipe (runs of several
    folds: `cross_validation`), each at each checkpoint asked; val_dirs: a member's validation
    predictions (out of fold for a recipe); test_dirs: its runs' test predictions, whose
    equal-weight soft vote is the member's test prediction (the fold ensemble)."""

    names: list[str]
    val_dirs: list[PredictionFolder]
    test_dirs: list[list[PredictionFolder]]
    truth: dict = field(repr=False)
    classes: ClassTable
    cross_validation: bool
    oof: list[OutOfFold] = field(default_factory=list)

    def run_weights(self, weights: Sequence[float] | None) -> tuple[list, list[float]]:
        """(every run's test folder, its weight): a member's weight shared by its runs (scaled
        by the fold counts' least common multiple, so whole weights stay whole)."""
        from segkit.vote import check_weights

        member = check_weights(weights, len(self.names), "ensemble members")
        scale = math.lcm(*(len(d) for d in self.test_dirs))
        dirs = [d for group in self.test_dirs for d in group]
        flat = [float(w) * scale / len(group) for w, group in zip(member, self.test_dirs)
                for _ in group]
        return dirs, flat

    def submit(self, out_csv, method: str, weights=None, selection=None, test_json=None
               ) -> list[float]:
        """The ensemble's test submission (segkit.ensemble.submit_ensemble over every run's
        test folder): greedy uses the selection's member weights, soft / hard `weights`.
        Returns each member's weight."""
        from segkit.checks import check_choice
        from segkit.ensemble import ENSEMBLE_METHODS, submit_ensemble
        from segkit.vote import check_weights

        check_choice("method", method, ENSEMBLE_METHODS)
        if method == "greedy" and selection is None:
            raise ParameterError("method='greedy' needs the greedy selection's result")
        member = selection.weights if method == "greedy" else weights
        dirs, flat = self.run_weights(member)
        submit_ensemble(dirs, out_csv, "hard" if method == "hard" else "soft", flat,
                        test_json=test_json)
        return check_weights(member, len(self.names), "ensemble members").tolist()


def _member_dirs(run: Run, checkpoint, test_file, data_root, tta: dict):
    tag = checkpoint_tag(run, checkpoint)
    return predict_run(run, "test", test_file, data_root,
                       outputs_dir() / "predictions" / tag / "test", checkpoint, **tta)


def ensemble_inputs(runs: Sequence[str | os.PathLike | Run], test_file, data_root=None,
                    checkpoints: Sequence = ("best",), flips=("h",), scales=(1.0,)
                    ) -> EnsembleInputs:
    """Predictions of every run at every checkpoint (reused when made the same way). Runs of
    one validation file are members on their own, scored on it; runs of several folds are
    grouped into recipes, each scored out of fold (all recipes must cover the same folds of one
    split), and a recipe's test prediction is the vote of its folds."""
    from segkit.ensemble import truth_at_size
    from segkit.runs import common_validation

    opened = [Run.open(r) for r in runs]
    if not opened:
        raise ParameterError("no runs given")
    checkpoints = list(checkpoints) or ["best"]
    tta = dict(flips=tuple(flips), scales=tuple(scales))
    tagged = len(checkpoints) > 1 or str(checkpoints[0]) != "best"
    vals = {run.data()[1].resolve() for run in opened}
    names, val_dirs, test_dirs, oofs = [], [], [], []
    if len(vals) == 1:
        root, val_file = common_validation(opened)
        coco = load_coco(val_file)
        classes = ClassTable.for_coco(coco.categories)
        for run in opened:
            for ckpt in checkpoints:
                names.append(checkpoint_tag(run, ckpt) if tagged else run.name)
                out = outputs_dir() / "predictions" / checkpoint_tag(run, ckpt) / "val"
                val_dirs.append(predict_run(run, "val", val_file, data_root, out, ckpt, **tta))
                test_dirs.append([_member_dirs(run, ckpt, test_file, data_root, tta)])
        truth = truth_at_size(coco, classes, val_dirs[0].size)
        return EnsembleInputs(names, val_dirs, test_dirs, truth, classes, False)
    groups = recipes(opened)
    folders = {name: {v.resolve() for _, v in check_folds(members)}
               for name, members in groups.items()}
    first = next(iter(folders))
    for name, files in folders.items():
        if files != folders[first]:
            raise SegkitError(f"recipe {name} validates on {sorted(f.name for f in files)}, "
                              f"recipe {first} on {sorted(f.name for f in folders[first])}: "
                              "recipes are compared out of fold on the same folds")
    truth = {}
    for members in groups.values():
        for ckpt in checkpoints:
            oof = out_of_fold(members, ckpt, data_root=data_root, **tta)
            names.append(oof.name)
            val_dirs.append(oof.folder)
            test_dirs.append([_member_dirs(r, ckpt, test_file, data_root, tta) for r in members])
            oofs.append(oof)
            truth = oof.truth
    classes = ClassTable.for_coco(load_coco(opened[0].data()[1]).categories)
    return EnsembleInputs(names, val_dirs, test_dirs, truth, classes, True, oofs)


def holdout_scores(runs: Sequence[str | os.PathLike | Run], holdout_file, data_root=None,
                   checkpoint: str = "best", flips=("h",), scales=(1.0,),
                   weights: Sequence[float] | None = None) -> pd.DataFrame:
    """Every run alone and the soft and hard votes of all of them (with `weights`, one per run)
    on an annotated file none of them trained or validated on: a fold ensemble against its
    best single fold. Rows: classes then mIoU."""
    from segkit.ensemble import score_ensembles, truth_at_size

    opened = [Run.open(r) for r in runs]
    coco = load_coco(holdout_file)
    classes = ClassTable.for_coco(coco.categories)
    split = f"holdout_{coco.path.stem}"
    dirs = [predict_run(run, split, coco.path, data_root,
                        outputs_dir() / "predictions" / checkpoint_tag(run, checkpoint) / split,
                        checkpoint, flips=tuple(flips), scales=tuple(scales)) for run in opened]
    truth = truth_at_size(coco, classes, dirs[0].size)
    return score_ensembles(dirs, truth, [r.name for r in opened],
                           soft={"soft vote (all)": weights},
                           hard={"hard vote (all)": weights}).table
