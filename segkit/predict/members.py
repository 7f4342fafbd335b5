"""What 07_ensemble combines: fold models of several recipes, their out-of-fold scores, and the
test predictions of each member; holdout scores of single models against their ensemble.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from segkit.coco.files import load_coco
from segkit.core.classes import ClassTable
from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import outputs_dir
from segkit.predict.cv import OutOfFold, check_folds, checkpoint_tag, out_of_fold, recipes
from segkit.predict.options import PredictOptions
from segkit.predict.writing import predict_run
from segkit.results.predictions import PredictionFolder
from segkit.results.runs import Run


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
        from segkit.submission.vote import check_weights

        member = check_weights(weights, len(self.names), "ensemble members")
        scale = math.lcm(*(len(d) for d in self.test_dirs))
        dirs = [d for group in self.test_dirs for d in group]
        flat = [float(w) * scale / len(group) for w, group in zip(member, self.test_dirs)
                for _ in group]
        return dirs, flat

    def submit(self, out_csv, method: str, weights=None, selection=None, test_json=None
               ) -> list[float]:
        """The ensemble's test submission (segkit.predict.ensemble.submit_ensemble over every run's
        test folder): greedy uses the selection's member weights, soft / hard `weights`.
        Returns each member's weight."""
        from segkit.core.checks import check_choice
        from segkit.predict.ensemble import ENSEMBLE_METHODS, submit_ensemble
        from segkit.submission.vote import check_weights

        check_choice("method", method, ENSEMBLE_METHODS)
        if method == "greedy" and selection is None:
            raise ParameterError("method='greedy' needs the greedy selection's result")
        member = selection.weights if method == "greedy" else weights
        dirs, flat = self.run_weights(member)
        submit_ensemble(dirs, out_csv, "hard" if method == "hard" else "soft", flat,
                        test_json=test_json)
        return check_weights(member, len(self.names), "ensemble members").tolist()


def _member_dir(run: Run, options: PredictOptions, split: str, coco_file, data_root):
    """A member's prediction of a split at options.checkpoint, in the folder of its
    checkpoint tag (outputs/predictions/<run>[@<checkpoint>]/<split>)."""
    out = outputs_dir() / "predictions" / checkpoint_tag(run, options.checkpoint) / split
    return predict_run(run, split, options, coco_file=coco_file, data_root=data_root,
                       out_dir=out)


def ensemble_inputs(runs: Sequence[str | os.PathLike | Run], test_file, data_root=None,
                    options: PredictOptions = PredictOptions(flips=("h",))) -> EnsembleInputs:
    """Predictions of every run at every checkpoint (reused when made the same way). Runs of
    one validation file are members on their own, scored on it; runs of several folds are
    grouped into recipes, each scored out of fold (all recipes must cover the same folds of one
    split), and a recipe's test prediction is the vote of its folds. The checkpoints are
    `options.members`; every other option (TTA, slide, size) applies to each of them."""
    from segkit.predict.ensemble import truth_at_size
    from segkit.results.runs import common_validation

    opened = [Run.open(r) for r in runs]
    if not opened:
        raise ParameterError("no runs given")
    checkpoints = list(options.members)
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
                val_dirs.append(_member_dir(run, options.at(ckpt), "val", val_file, data_root))
                test_dirs.append([_member_dir(run, options.at(ckpt), "test", test_file,
                                              data_root)])
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
            oof = out_of_fold(members, options.at(ckpt), data_root=data_root)
            names.append(oof.name)
            val_dirs.append(oof.folder)
            test_dirs.append([_member_dir(r, options.at(ckpt), "test", test_file, data_root)
                              for r in members])
            oofs.append(oof)
            truth = oof.truth
    classes = ClassTable.for_coco(load_coco(opened[0].data()[1]).categories)
    return EnsembleInputs(names, val_dirs, test_dirs, truth, classes, True, oofs)


def holdout_scores(runs: Sequence[str | os.PathLike | Run], holdout_file, data_root=None,
                   options: PredictOptions = PredictOptions(flips=("h",)),
                   weights: Sequence[float] | None = None) -> pd.DataFrame:
    """Every run alone and the soft and hard votes of all of them (with `weights`, one per run)
    on an annotated file none of them trained or validated on: a fold ensemble against its
    best single fold. Rows: classes then mIoU."""
    from segkit.predict.ensemble import score_ensembles, truth_at_size

    opened = [Run.open(r) for r in runs]
    coco = load_coco(holdout_file)
    classes = ClassTable.for_coco(coco.categories)
    split = f"holdout_{coco.path.stem}"
    dirs = [_member_dir(run, options, split, coco.path, data_root) for run in opened]
    truth = truth_at_size(coco, classes, dirs[0].size)
    return score_ensembles(dirs, truth, [r.name for r in opened],
                           soft={"soft vote (all)": weights},
                           hard={"hard vote (all)": weights}).table


@dataclass
class CheckpointVote:
    """05_predict's checkpoint vote: each checkpoint and their soft vote scored on the run's
    validation file, and the vote's test submission (its local score beside it)."""

    table: pd.DataFrame
    miou: float
    submission: Path


def vote_checkpoints(run: str | os.PathLike | Run, options: PredictOptions, *,
                     test_file: str = "test.json", data_root=None, name: str = ""
                     ) -> CheckpointVote:
    """Soft-vote `options.checkpoints` of one run (05's `checkpoints`): scored on the run's
    validation file, and written as outputs/predictions/<name or run>/checkpoint_vote.csv,
    checked against the test file, with its validation mIoU beside it.

    Example:
        vote_checkpoints("lite0_fold0", PredictOptions(checkpoints=["best", 400, 500]))
    """
    from segkit.predict.ensemble import score_ensembles
    from segkit.submission.leaderboard import write_local_score

    if len(options.checkpoints) < 2:
        raise ParameterError(f"checkpoints={list(options.checkpoints)}: a vote needs at least "
                             "two checkpoints")
    run = Run.open(run)
    root = Path(data_root) if data_root else run.data_root
    members = ensemble_inputs([run], root / test_file, root, options)
    votes = score_ensembles(members.val_dirs, members.truth, members.names,
                            soft={"checkpoint vote": None})
    csv = outputs_dir() / "predictions" / (name or run.name) / "checkpoint_vote.csv"
    members.submit(csv, "soft", test_json=root / test_file)  # checked
    write_local_score(csv, votes.miou["checkpoint vote"], "validation mIoU")
    return CheckpointVote(votes.table, float(votes.miou["checkpoint vote"]), csv)
