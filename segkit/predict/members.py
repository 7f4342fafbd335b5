"""What 07_ensemble combines: fold models of several recipes, their out-of-fold scores, and the
test predictions of each member; holdout scores of single models against their ensemble.

A recipe's full-data runs (fold=all: `lite0_foldall` beside `lite0_fold0`, ...) have no
out-of-fold prediction, so nothing scores them; they join their recipe's member on the test
images only, each with the weight of the recipe's fold ensemble: it is the same recipe
trained on more data, so it is given what the recipe earned out of fold (its fold runs share
that weight between them, each full-data run gets all of it).
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
from segkit.predict.cv import (
    OutOfFold,
    check_folds,
    checkpoint_tag,
    out_of_fold,
    recipe_name,
    recipes,
)
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
    # per member: its recipe's full-data runs and their test folders (module docstring)
    full_runs: list[list[Run]] = field(default_factory=list)
    full_dirs: list[list[PredictionFolder]] = field(default_factory=list)

    def _full(self, k: int) -> list[PredictionFolder]:
        return self.full_dirs[k] if k < len(self.full_dirs) else []

    def run_weights(self, weights: Sequence[float] | None) -> tuple[list, list[float]]:
        """(every run's test folder, its weight): a member's weight shared by its fold runs,
        and given whole to each of its full-data runs (scaled by the fold counts' least common
        multiple, so whole weights stay whole)."""
        from segkit.submission.vote import check_weights

        member = check_weights(weights, len(self.names), "ensemble members")
        scale = math.lcm(*(len(d) for d in self.test_dirs))
        dirs, flat = [], []
        for k, (w, group) in enumerate(zip(member, self.test_dirs)):
            dirs += list(group) + self._full(k)
            flat += [float(w) * scale / len(group)] * len(group) + \
                [float(w) * scale] * len(self._full(k))
        return dirs, flat

    def full_data_note(self, weights: Sequence[float] | None = None) -> list[str]:
        """One line per full-data run: the member it joins and the weight it gets, and why."""
        from segkit.submission.vote import check_weights

        member = check_weights(weights, len(self.names), "ensemble members")
        lines = []
        for k, runs in enumerate(self.full_runs):
            folds = len(self.test_dirs[k])
            for run in runs:
                lines.append(f"{run.name}: a full-data run of {self.names[k]}, on the test "
                             f"images only, with weight {member[k]:g}: that of its recipe's "
                             f"fold ensemble ({folds} folds sharing {member[k]:g}), since it is "
                             "the same recipe trained on every image; with no out-of-fold "
                             "prediction nothing scores it")
        return lines

    def decisions(self, decisions: str | os.PathLike, name: str,
                  start_weights: Sequence[float] | None = None):
        """07's `decisions`: "" none (None); "fit": fitted on the members' OOF predictions
        from `start_weights` (the method's) and written to outputs/decisions/<name>/
        decisions.json; else a decisions.json to apply, decided for these members."""
        from segkit.predict.decision_record import load_decisions, write_decisions
        from segkit.predict.decisions import fit_decisions

        if not os.fspath(decisions):
            return None
        if os.fspath(decisions) != "fit":
            loaded = load_decisions(decisions)
            if loaded.members != self.names:
                raise SegkitError(f"{loaded.path}: decided for members {loaded.members}, the "
                                  f"ensemble has {self.names}")
            return loaded
        if not self.cross_validation:
            raise ParameterError("decisions=fit fits and judges decisions out of fold: give "
                                 "the fold runs of a recipe (on one validation fold they would "
                                 "be fitted and judged on the same images)")
        fitted = fit_decisions(self.val_dirs, self.truth, self.names,
                               start_weights=start_weights)
        write_decisions(fitted, name)
        return fitted

    def submit(self, out_csv, method: str, weights=None, selection=None, test_json=None,
               decisions=None) -> list[float]:
        """The ensemble's test submission (segkit.predict.ensemble.submit_ensemble over every run's
        test folder): greedy uses the selection's member weights, soft / hard `weights`; with
        `decisions` (segkit.predict.decisions.Decisions fitted on these members' OOF
        predictions), the soft vote with the decided member weights, class biases and small
        regions removed. Returns each member's weight."""
        from segkit.core.checks import check_choice
        from segkit.predict.ensemble import ENSEMBLE_METHODS, submit_ensemble
        from segkit.submission.vote import check_weights

        check_choice("method", method, ENSEMBLE_METHODS)
        if method == "greedy" and selection is None:
            raise ParameterError("method='greedy' needs the greedy selection's result")
        if decisions is not None:
            from segkit.predict.decision_record import decided_submission

            if method == "hard":
                raise ParameterError("decisions apply to probabilities: use method soft or "
                                     "greedy with them")
            if decisions.members != self.names:
                raise SegkitError(f"{decisions.path or 'the decisions'}: decided for members "
                                  f"{decisions.members}, the ensemble has {self.names}")
            dirs, flat = self.run_weights(decisions.weights)
            decided_submission(decisions, dirs, flat, out_csv, test_json=test_json)
            return check_weights(decisions.weights, len(self.names), "members").tolist()
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
    from segkit.results.run_lists import common_validation

    opened = [Run.open(r) for r in runs]
    if not opened:
        raise ParameterError("no runs given")
    checkpoints = list(options.members)
    tagged = len(checkpoints) > 1 or str(checkpoints[0]) != "best"
    vals = {None if val is None else val.resolve() for val in (r.data()[1] for r in opened)}
    names, val_dirs, test_dirs, oofs = [], [], [], []
    full = [run for run in opened if run.full_data] if len(vals) > 1 or None in vals else []
    opened = [run for run in opened if run not in full]
    if full and not opened:
        raise SegkitError(f"{full[0].path}: a full-data run (fold=all) joins an ensemble "
                          "through its recipe's fold runs, whose out-of-fold score gives it its "
                          "weight; give them too (05_predict predicts it alone)")
    if len(vals) == 1 and not full:
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
    by_recipe: dict = {}
    for run in full:
        if recipe_name(run) not in groups:
            raise SegkitError(f"{run.path}: a full-data run of recipe {recipe_name(run)}, but "
                              f"none of its fold runs is given ({', '.join(groups)}): its weight "
                              "is its recipe's, earned out of fold")
        by_recipe.setdefault(recipe_name(run), []).append(run)
    truth = {}
    full_runs, full_dirs = [], []
    for recipe, members in groups.items():
        for ckpt in checkpoints:
            oof = out_of_fold(members, options.at(ckpt), data_root=data_root)
            names.append(oof.name)
            val_dirs.append(oof.folder)
            test_dirs.append([_member_dir(r, options.at(ckpt), "test", test_file, data_root)
                              for r in members])
            full_runs.append(by_recipe.get(recipe, []))
            full_dirs.append([_member_dir(r, options.at(ckpt), "test", test_file, data_root)
                              for r in full_runs[-1]])
            oofs.append(oof)
            truth = oof.truth
    classes = ClassTable.for_coco(load_coco(opened[0].data()[1]).categories)
    return EnsembleInputs(names, val_dirs, test_dirs, truth, classes, True, oofs, full_runs,
                          full_dirs)


def holdout_scores(runs: Sequence[str | os.PathLike | Run], holdout_file, data_root=None,
                   options: PredictOptions = PredictOptions(flips=("h",)),
                   weights: Sequence[float] | None = None) -> pd.DataFrame:
    """Every run alone and the soft and hard votes of all of them (with `weights`, one per run)
    on an annotated file none of them trained or validated on: a fold ensemble against its
    best single fold. Rows: classes then mIoU."""
    from segkit.predict.ensemble import score_ensembles, truth_at_size

    opened = [Run.open(r) for r in runs]
    coco = load_coco(holdout_file)
    trained_on_it = [r for r in opened if r.full_data and (r.data()[1] is None or
                                                           r.data()[1].resolve() != coco.path.resolve())]
    if trained_on_it:  # a full-data run without this holdout trained on its images
        print(f"left out of the holdout scores (trained on every image, the holdout's too): "
              f"{', '.join(r.name for r in trained_on_it)}")
        opened = [r for r in opened if r not in trained_on_it]
        weights = None
    if not opened:
        raise ParameterError("no run left to score on the holdout")
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
