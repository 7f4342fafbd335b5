"""TODO docstring"""

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
