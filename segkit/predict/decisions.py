"""Decisions on out-of-fold (OOF) predictions, nnU-Net's rule: choose ensembles and
post-processing on OOF predictions only, and keep each only when it helps.

Three decisions are tried, in this order, each on top of the ones kept before it:

- `weights`: the members' soft-vote weights (several members only), by coordinate ascent on
  the OOF mIoU from the start weights (07's method: greedy selection's counts, or equal):
  each member's weight in turn set to the best of WEIGHT_GRID (times the largest start
  weight), `rounds` times over;
- `class_bias`: one bias per class added to the log-probabilities before the argmax (a prior
  correction: a rare or thin class the model under-calls gets a positive one), by coordinate
  ascent over BIAS_GRID (-3 to 3 in steps of 0.25), `rounds` times over;
- `min_area`: per class, connected regions (8-connected) of the predicted class smaller than
  a minimum area (AREA_GRID, pixels at the stored probabilities' size; 0 = none removed) are
  relabelled to the label most of their border touches (Background when nothing borders
  them), the threshold fitted per class in class order.

**When a decision is kept.** Fitting and judging on the same images would flatter every
decision, so each is judged by cross-fitting over the OOF folds: for each fold, the decision
is fitted on the other folds' images and applied to this fold's; the OOF mIoU after it is one
confusion matrix over every image so predicted, and each fold's gain is its own mIoU after
minus before. The noise is the standard error of those per-fold gains (sample standard
deviation / sqrt(folds)): how much the gain varies from fold to fold. A decision is kept only
when its cross-fitted OOF gain is positive and larger than `margin` (default 1) times that
noise; its kept parameters are then fitted again on every OOF image. decisions.json records
every decision tried: its parameters, OOF mIoU and per-class IoU before and after, the per-fold
gains, the noise, kept or not and why.

Scores and fits use the stored quantised probabilities (uint8, at their stored size, e.g.
256x256, as the OOF score does), in integer arithmetic: log-probabilities are tabulated in
units of 1/1024 and the biases are multiples of 1/4, so the argmax with biases is exact and
the same at fitting and at applying. Applied to test predictions (`decided_submission`), the
members' probabilities are voted with the decided weights, rounded to uint8 as the OOF vote
is, biased, argmaxed and cleaned of small regions.

Example:
    decisions = fit_decisions([oof.folder], oof.truth, names=[oof.name])
    write_decisions(decisions, "lite0")          # outputs/decisions/lite0/decisions.json
    decided_submission(decisions, ["outputs/predictions/lite0_foldall/test"], [1], "sub.csv")
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from segkit.core.classes import IGNORE_INDEX
from segkit.core.errors import ParameterError
from segkit.core.metrics import miou, per_class_iou
from segkit.predict.decision_data import _load, _miou_of, _Oof
from segkit.predict.decision_record import Decisions
from segkit.predict.decision_rules import (
    _LOWEST,
    AREA_GRID,
    LOG_TABLE,
    UNIT,
    DecisionState,
    _labels,
    _regions,
    _scores,
    _vote,
    decide_labels,
)

DECISIONS = ("weights", "class_bias", "min_area")
WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
BIAS_GRID = tuple(k / 4 for k in range(-12, 13))
VERSION = 1

_BIAS_UNITS = np.array([round(b * UNIT) for b in BIAS_GRID], np.int64)
_BIAS_STEP = int(_BIAS_UNITS[1] - _BIAS_UNITS[0])
FIT_PIXELS = 128 * 128  # above this many pixels an image is fitted on every 2nd row and column


def decisions_rule(margin: float = 1.0) -> str:
    """The keep rule in words (decisions.json and the printed table say it)."""
    return (f"cross-fitted over the OOF folds (fitted on the other folds, applied to each); kept "
            f"when the OOF mIoU gain is positive and above {margin:g} x the standard error of "
            "the per-fold gains (sample sd / sqrt(folds))")


# ---------------------------------------------------------------------------------------------
# Labels from probabilities: vote, bias, argmax, small regions
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# OOF data and scores
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Fitting each decision on a set of images
# ---------------------------------------------------------------------------------------------


def _fit_weights(data: _Oof, state: DecisionState, index: np.ndarray, rounds: int) -> np.ndarray:
    weights = state.weights.astype(np.float64).copy()
    scale = weights.max()

    def score(w) -> float:
        cm = np.zeros((data.num_classes,) * 2, np.int64)
        for part, members in data.chunks(index):
            cm += data.confusion(_labels(_vote(members, w)), part)
        return _miou_of(cm)

    current = score(weights)
    for _ in range(rounds):
        changed = False
        for j in range(len(weights)):
            for value in WEIGHT_GRID:
                trial = weights.copy()
                trial[j] = value * scale
                if trial[j] == weights[j] or trial.sum() <= 0:
                    continue
                got = score(trial)
                if got > current + 1e-12:
                    weights, current, changed = trial, got, True
        if not changed:
            break
    return weights


def _fit_bias(data: _Oof, state: DecisionState, index: np.ndarray, rounds: int) -> np.ndarray:
    """Class biases (units of 1/1024) by coordinate ascent: for class c, every pixel's
    prediction is c or the best other class a, and c wins at bias b exactly when b > d
    (d = a's score minus c's unbiased score), or b == d when c < a (the tie rule); one pass
    counts (first winning grid step, truth, a) and gives the confusion matrix at every grid
    step."""
    c_count = data.num_classes
    grid = _BIAS_UNITS
    bias = np.zeros(c_count, np.int64) if state.bias is None else state.bias.astype(np.int64)
    step = 2 if data.truth[0].size > FIT_PIXELS else 1  # a fit on a quarter of the pixels
    for _ in range(rounds):
        changed = False
        for c in range(c_count):
            counts = np.zeros((len(grid) + 1) * c_count * c_count, np.int64)
            for part, members in data.chunks(index):
                q = _vote([m[..., ::step, ::step] for m in members], state.weights)
                scores = _scores(q, bias)
                own = LOG_TABLE[q[:, c]]
                scores[:, c] = _LOWEST
                best = scores.max(1)
                other = np.zeros(best.shape, np.uint8)  # the lowest class of the best score
                for k in range(c_count - 1, -1, -1):
                    other[scores[:, k] == best] = k
                truth = data.truth[part][:, ::step, ::step]
                keep = truth != IGNORE_INDEX
                d = best[keep].astype(np.int64) - own[keep]
                other, truth = other[keep].astype(np.int64), truth[keep].astype(np.int64)
                # the first grid step where c wins: grid >= d when c < other, else grid > d
                below = d - grid[0]
                first = np.where(other > c, -(-below // _BIAS_STEP), below // _BIAS_STEP + 1)
                first = np.clip(first, 0, len(grid))
                counts += np.bincount((first * c_count + truth) * c_count + other,
                                      minlength=len(counts))
            table = counts.reshape(len(grid) + 1, c_count, c_count).cumsum(0)
            total = table[-1]
            scores_by_step = []
            for k in range(len(grid)):
                won = table[k]
                cm = total - won
                cm[:, c] += won.sum(1)
                scores_by_step.append(_miou_of(cm))
            pick = max(range(len(grid)), key=lambda k: (round(scores_by_step[k], 12),
                                                        -abs(int(grid[k]))))
            if grid[pick] != bias[c]:
                bias[c], changed = grid[pick], True
        if not changed:
            break
    return bias


def _fit_min_area(data: _Oof, state: DecisionState, index: np.ndarray, labels: np.ndarray
                  ) -> tuple[list, np.ndarray]:
    """Per-class minimum areas fitted on images `index`, classes in order, each on the labels
    the ones before left; returns them and every image's labels after them."""
    c_count = data.num_classes
    labels = labels.copy()
    fit = np.zeros(len(labels), bool)
    fit[index] = True
    chosen = []
    cm = data.confusion(labels[index], index)  # kept current: each removal's change added
    for c in range(c_count):
        regions, stats = [], []
        for i in range(len(labels)):
            components, areas, replace = _regions(labels[i], c, c_count)
            small = np.flatnonzero((areas < AREA_GRID[-1]) & (np.arange(len(areas)) > 0))
            if not len(small):
                continue
            regions.append((i, components, areas, replace))
            if fit[i]:
                truth = data.truth[i]
                keep = truth != IGNORE_INDEX
                hist = np.bincount(components[keep].astype(np.int64) * c_count + truth[keep],
                                   minlength=len(areas) * c_count).reshape(len(areas), c_count)
                stats.append((areas[small], replace[small], hist[small]))
        best_area, best_score, best_cm = 0, _miou_of(cm), cm
        if stats:
            areas = np.concatenate([s[0] for s in stats])
            replace = np.concatenate([s[1] for s in stats])
            hist = np.concatenate([s[2] for s in stats])
            for area in AREA_GRID[1:]:
                sel = areas < area
                trial = cm.copy()
                trial[:, c] -= hist[sel].sum(0)
                np.add.at(trial.T, replace[sel], hist[sel])
                got = _miou_of(trial)
                if got > best_score + 1e-12:
                    best_area, best_score, best_cm = area, got, trial
        chosen.append(best_area)
        cm = best_cm
        if best_area:
            for i, components, areas, replace in regions:
                small = np.flatnonzero((areas < best_area) & (np.arange(len(areas)) > 0))
                if len(small):
                    mask = np.isin(components, small)
                    labels[i][mask] = replace[components[mask]]
    return chosen, labels


# ---------------------------------------------------------------------------------------------
# Cross-fitting and the record
# ---------------------------------------------------------------------------------------------


def _scored(cm: np.ndarray, classes: list[str]) -> dict:
    return {"mIoU": float(miou(cm)),
            "per_class": {k: (None if math.isnan(v) else float(v))
                          for k, v in zip(classes, per_class_iou(cm))}}


def _per_fold_miou(cms: np.ndarray) -> list[float]:
    return [float(miou(cm)) for cm in cms]


class _Chains:
    """The state of every cross-fitting chain: one per fold (fitted without it) and one on
    every image (the parameters that are kept)."""

    def __init__(self, data: _Oof, start: DecisionState):
        self.data = data
        self.states = {k: start for k in range(data.folds)}
        self.states["all"] = start

    def fit_index(self, key) -> np.ndarray:
        return np.arange(len(self.data.fold)) if key == "all" else \
            np.flatnonzero(self.data.fold != key)

    def labels(self, states: dict, key=None) -> np.ndarray:
        """Every image's labels, each by its own fold's chain (cross-fitted), or all of them
        by the chain `key`."""
        out = np.zeros(self.data.truth.shape, np.uint8)
        groups = [(key, np.arange(len(self.data.fold)))] if key is not None else \
            [(k, np.flatnonzero(self.data.fold == k)) for k in range(self.data.folds)]
        for k, index in groups:
            for part, members in self.data.chunks(index):
                out[part] = decide_labels(members, states[k], self.data.num_classes)
        return out


def _fitted(decision: str, data: _Oof, chains: _Chains, key, state: DecisionState,
            rounds: int) -> DecisionState:
    """`state` with `decision` fitted on the images of chain `key` (a fold's others, or all)."""
    index = chains.fit_index(key)
    if decision == "weights":
        return state.replace(weights=_fit_weights(data, state, index, rounds))
    if decision == "class_bias":
        return state.replace(bias=_fit_bias(data, state, index, rounds))
    areas, _ = _fit_min_area(data, state, index, chains.labels({key: state}, key))
    return state.replace(min_area=areas)


def _judged(data: _Oof, before_labels, after_labels, margin: float) -> dict:
    """A decision's cross-fitted OOF scores before and after, per fold, its gain against the
    fold-to-fold noise, and whether it is kept (and why)."""
    everything = np.arange(len(data.fold))
    before_cm = data.confusion(before_labels, everything)
    after_cm = data.confusion(after_labels, everything)
    before_folds = _per_fold_miou(data.confusion(before_labels, everything, by_fold=True))
    after_folds = _per_fold_miou(data.confusion(after_labels, everything, by_fold=True))
    gains = [a - b for a, b in zip(after_folds, before_folds)]
    gain = float(miou(after_cm) - miou(before_cm))
    noise = float(np.std(gains, ddof=1) / math.sqrt(len(gains)))
    kept = bool(gain > 0 and gain > margin * noise)
    if kept:
        why = f"OOF mIoU {gain:+.4f} (cross-fitted) is above the noise {margin:g} x {noise:.4f}"
    elif gain <= 0:
        why = f"OOF mIoU {gain:+.4f} (cross-fitted): does not improve the OOF score"
    else:
        why = (f"OOF mIoU {gain:+.4f} (cross-fitted) is within the noise {margin:g} x "
               f"{noise:.4f}: not shown to help")
    return {"kept": kept, "why": why, "oof_before": _scored(before_cm, data.classes),
            "oof_after": _scored(after_cm, data.classes), "gain": gain, "noise": noise,
            "per_fold_gain": gains, "per_fold_before": before_folds,
            "per_fold_after": after_folds}


def fit_decisions(pred_dirs: Sequence[str | os.PathLike],
                  truth: Mapping[int, np.ndarray] | Callable[[dict], np.ndarray],
                  names: Sequence[str] | None = None, folds: Mapping[int, int] | None = None,
                  start_weights: Sequence[float] | None = None,
                  tried: Sequence[str] = DECISIONS, margin: float = 1.0, rounds: int = 2,
                  progress: bool = False) -> Decisions:
    """Fit and judge the decisions (module docstring) on OOF prediction folders, one per
    member (their probabilities at one size, the same images).

    truth: image id -> label map at the probabilities' size (OutOfFold.truth, 07's truth);
    folds: image id -> fold (default: from the first folder's OOF meta.json); start_weights:
    the members' soft-vote weights before any decision (None: equal); tried: which decisions
    to try (always in DECISIONS' order).

    Example:
        oof = out_of_fold(["lite0_fold0", "lite0_fold1", "lite0_fold2"])
        print(fit_decisions([oof.folder], oof.truth, [oof.name]).report())
    """
    unknown = [d for d in tried if d not in DECISIONS]
    if unknown:
        raise ParameterError(f"decisions {unknown}; allowed: {', '.join(DECISIONS)}")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ParameterError(f"margin={margin!r}: expected a number >= 0")
    data = _load(pred_dirs, truth, folds)
    count = len(data.members)
    names = list(names) if names is not None else [str(d) for d in pred_dirs]
    if len(names) != count:
        raise ParameterError(f"{len(names)} names for {count} prediction folders")
    from segkit.submission.vote import check_weights

    start = check_weights(start_weights, count, "members").astype(np.float64)
    if start.sum() <= 0:
        raise ParameterError(f"start_weights={list(start)}: at least one must be positive")
    chains = _Chains(data, DecisionState(start))
    everything = np.arange(len(data.fold))
    before_labels = chains.labels(chains.states)
    start_cm = data.confusion(before_labels, everything)
    steps = []
    for decision in DECISIONS:
        entry = {"decision": decision}
        if decision not in tried:
            steps.append({**entry, "tried": False, "kept": False, "why": "not asked"})
            continue
        if decision == "weights" and count < 2:
            steps.append({**entry, "tried": False, "kept": False,
                          "why": "one member: no weights to fit"})
            continue
        if progress:
            print(f"fitting {decision} on {data.folds} folds and on all ...")
        new = {key: _fitted(decision, data, chains, key, state, rounds)
               for key, state in chains.states.items()}
        after_labels = chains.labels(new)
        step = _judged(data, before_labels, after_labels, margin)
        in_sample = data.confusion(chains.labels(new, "all"), everything)
        steps.append({**entry, "tried": True, **step,
                      "fitted": _parameters(decision, new["all"], data.classes, names),
                      "in_sample_after": float(miou(in_sample))})
        if step["kept"]:
            chains.states = new
            before_labels = after_labels
    final = chains.states["all"]
    record = {
        "version": VERSION, "members": names, "inputs": [str(Path(d)) for d in pred_dirs],
        "classes": data.classes, "size": list(data.members[0].shape[2:]),
        "images": len(data.ids), "folds": data.folds, "margin": margin, "rounds": rounds,
        "rule": decisions_rule(margin), "start_weights": start.tolist(),
        "before": _scored(start_cm, data.classes),
        "after": _scored(data.confusion(before_labels, everything), data.classes),
        "steps": steps,
        "final": {"weights": final.weights.tolist(),
                  "class_bias": None if final.bias is None else
                  _parameters("class_bias", final, data.classes, names),
                  "min_area": None if final.min_area is None else
                  _parameters("min_area", final, data.classes, names)},
    }
    return Decisions(record)


def _parameters(decision: str, state: DecisionState, classes: list[str], names: list[str]) -> dict:
    if decision == "weights":
        return dict(zip(names, state.weights.tolist()))
    if decision == "class_bias":
        return {k: float(v) / UNIT for k, v in zip(classes, state.bias)}
    return {k: int(v) for k, v in zip(classes, state.min_area)}


# ---------------------------------------------------------------------------------------------
# The record: decisions.json, tables, applying to test predictions
# ---------------------------------------------------------------------------------------------


