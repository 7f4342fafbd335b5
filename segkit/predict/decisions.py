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

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segkit.core.classes import IGNORE_INDEX
from segkit.core.errors import ParameterError, SegkitError
from segkit.core.metrics import miou, per_class_iou
from segkit.core.paths import outputs_dir, write_text_atomic
from segkit.results.predictions import PredictionSet

DECISIONS = ("weights", "class_bias", "min_area")
WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
BIAS_GRID = tuple(k / 4 for k in range(-12, 13))
AREA_GRID = (0, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNIT = 1024  # log-probabilities and biases in units of 1/1024
VERSION = 1
CHUNK = 16  # images per array operation

# log((q + 0.5) / 256) of a stored probability q = 0..255, in units of 1/1024: strictly
# increasing (steps of 4 units at least), so its argmax is the argmax of q, ties alike
# (int16: with biases within +-3 the sums stay within -9500..3100)
LOG_TABLE = np.round(np.log((np.arange(256) + 0.5) / 256) * UNIT).astype(np.int16)
_BIAS_UNITS = np.array([round(b * UNIT) for b in BIAS_GRID], np.int64)
_BIAS_STEP = int(_BIAS_UNITS[1] - _BIAS_UNITS[0])
_LOWEST = np.int16(-(2 ** 15))
FIT_PIXELS = 128 * 128  # above this many pixels an image is fitted on every 2nd row and column


def decisions_rule(margin: float = 1.0) -> str:
    """The keep rule in words (decisions.json and the printed table say it)."""
    return (f"cross-fitted over the OOF folds (fitted on the other folds, applied to each); kept "
            f"when the OOF mIoU gain is positive and above {margin:g} x the standard error of "
            "the per-fold gains (sample sd / sqrt(folds))")


# ---------------------------------------------------------------------------------------------
# Labels from probabilities: vote, bias, argmax, small regions
# ---------------------------------------------------------------------------------------------


def _argmax(scores: np.ndarray, axis: int = 1) -> np.ndarray:
    """argmax over `axis` (the classes), the lowest class on ties, as uint8, by a running
    maximum (np.argmax copies a transposed array first)."""
    scores = np.moveaxis(scores, axis, 0)
    best = scores[0].copy()
    label = np.zeros(best.shape, np.uint8)
    for c in range(1, scores.shape[0]):
        better = scores[c] > best
        np.maximum(best, scores[c], out=best)
        label[better] = c
    return label


def _vote(members: Sequence[np.ndarray], weights) -> np.ndarray:
    """The weighted mean of the members' uint8 probabilities, rounded to uint8 (one member
    with any positive weight: its own probabilities)."""
    weights = np.asarray(weights, np.float64)
    if len(members) == 1:
        return members[0]
    acc = np.zeros(members[0].shape, np.float64)
    for p, w in zip(members, weights):
        if w:
            acc += p * w
    return np.clip(np.rint(acc / weights.sum()), 0, 255).astype(np.uint8)


def _scores(q: np.ndarray, bias_units) -> np.ndarray:
    """Log-probability units plus the class biases, int16, classes on axis -3."""
    scores = LOG_TABLE[q]
    if bias_units is not None:
        scores += np.asarray(bias_units, np.int16).reshape((-1, 1, 1))
    return scores


def _labels(q: np.ndarray, bias_units=None) -> np.ndarray:
    """Label maps of uint8 probabilities ((n, C, H, W) or (C, H, W)) with class biases."""
    axis = q.ndim - 3
    if bias_units is None or not np.any(bias_units):
        return _argmax(q, axis)
    return _argmax(_scores(q, bias_units), axis)


def _regions(label: np.ndarray, c: int, num_classes: int, limit: int = AREA_GRID[-1]):
    """(component map, areas, replacement label) of the 8-connected regions of class `c` in
    one label map; component 0 is the rest. The replacement is the label most of a region's
    border pixels (its 8 neighbours outside it) have, Background (0) when nothing borders it;
    left 0 for all when no region is below `limit` pixels."""
    import cv2

    count, components, stats, _ = cv2.connectedComponentsWithStats(
        (label == c).astype(np.uint8), connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    replace = np.zeros(count, np.uint8)
    if count > 1 and areas[1:].min() < limit:
        # the border: pixels outside the regions next to one (a pixel next to two regions
        # counts for the one of the higher number)
        near = cv2.dilate(components.astype(np.float32), np.ones((3, 3), np.uint8))
        border = (components == 0) & (near > 0)
        touching = np.bincount(near[border].astype(np.int64) * num_classes + label[border],
                               minlength=count * num_classes).reshape(count, num_classes)
        replace = touching.argmax(1).astype(np.uint8)
        replace[touching.sum(1) == 0] = 0
    return components, areas, replace


def _remove_small(label: np.ndarray, min_area: Sequence[int], num_classes: int) -> np.ndarray:
    """One label map with every class's regions below its minimum area relabelled (classes in
    order, each on the result of the ones before)."""
    label = label.copy()
    for c, area in enumerate(min_area):
        if area > 0:
            components, areas, replace = _regions(label, c, num_classes, area)
            small = np.flatnonzero((areas < area) & (np.arange(len(areas)) > 0))
            if len(small):
                mask = np.isin(components, small)
                label[mask] = replace[components[mask]]
    return label


@dataclass
class _State:
    """What a chain of decisions holds: member weights, class biases (units), minimum
    areas per class (None: not decided)."""

    weights: np.ndarray
    bias: np.ndarray | None = None
    min_area: list | None = None

    def replace(self, **changes) -> _State:
        return _State(**{**self.__dict__, **changes})


def _decide(members: Sequence[np.ndarray], state: _State, num_classes: int) -> np.ndarray:
    """Label maps (n, H, W) of members' probabilities (each (n, C, H, W)) under a state."""
    labels = _labels(_vote(members, state.weights), state.bias)
    if state.min_area is not None:
        labels = np.stack([_remove_small(lab, state.min_area, num_classes) for lab in labels])
    return labels


# ---------------------------------------------------------------------------------------------
# OOF data and scores
# ---------------------------------------------------------------------------------------------


def oof_folds(folder) -> dict[int, int]:
    """image id -> fold index of an OOF prediction folder (segkit.predict.cv: its meta.json
    names the folds' validation files, in fold order)."""
    from segkit.coco.files import load_coco
    from segkit.results.predictions import PredictionFolder

    folder = PredictionFolder(folder)
    files = (folder.meta.get("oof") or {}).get("val_files")
    if not files:
        raise SegkitError(f"{folder.path}: not an out-of-fold prediction (its meta.json names no "
                          "fold validation files): decisions are fitted on OOF predictions of "
                          "a recipe's fold runs (segkit oof / 07_ensemble)")
    return {img["id"]: k for k, path in enumerate(files) for img in load_coco(path).images}


@dataclass
class _Oof:
    members: list[np.ndarray]  # each (N, C, H, W) uint8
    truth: np.ndarray  # (N, H, W) uint8
    fold: np.ndarray  # (N,) fold index 0..k-1
    classes: list[str]
    ids: list[int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def folds(self) -> int:
        return int(self.fold.max()) + 1

    def chunks(self, index: np.ndarray):
        for start in range(0, len(index), CHUNK):
            part = index[start:start + CHUNK]
            yield part, [m[part] for m in self.members]

    def confusion(self, labels: np.ndarray, index: np.ndarray, by_fold: bool = False
                  ) -> np.ndarray:
        """(C, C) confusion matrix of label maps of images `index`, or (folds, C, C)."""
        c = self.num_classes
        size = (self.folds if by_fold else 1) * c * c
        counts = np.zeros(size, np.int64)
        for start in range(0, len(index), 4 * CHUNK):  # int64 codes of a few images at a time
            part = slice(start, start + 4 * CHUNK)
            truth = self.truth[index[part]]
            keep = truth != IGNORE_INDEX
            code = truth.astype(np.int64) * c + labels[part]
            if by_fold:
                code += (self.fold[index[part]] * c * c)[:, None, None]
            counts += np.bincount(code[keep], minlength=size)
        return counts.reshape(self.folds, c, c) if by_fold else counts.reshape(c, c)


def _load(pred_dirs, truth, folds) -> _Oof:
    from segkit.predict.ensemble import _truth_for

    folders = PredictionSet.open(pred_dirs, minimum=1)
    images = folders.images
    if folds is None:
        folds = oof_folds(folders.dirs[0])
    c = len(folders.classes)
    first = folders.folders[0].probs(images[0]["id"])
    members = []
    for folder in folders.folders:  # filled in place: one copy of every probability in memory
        stacked = np.empty((len(images), *first.shape), np.uint8)
        for k, img in enumerate(images):
            stacked[k] = folder.probs(img["id"])
        members.append(stacked)
    labels = np.stack([_truth_for(truth, img, members[0].shape[2:], c, IGNORE_INDEX)
                       for img in images]).astype(np.uint8)
    missing = [img["id"] for img in images if img["id"] not in folds]
    if missing:
        raise ParameterError(f"no fold for image ids {missing[:5]}: give every image its fold")
    found = sorted({int(folds[img["id"]]) for img in images})
    codes = {k: i for i, k in enumerate(found)}
    fold = np.array([codes[int(folds[img["id"]])] for img in images], np.int64)
    if len(found) < 2:
        raise SegkitError("decisions are judged across folds: the OOF predictions hold one fold "
                          "only (give every fold run of the recipe)")
    return _Oof(members, labels, fold, list(folders.classes), [img["id"] for img in images])


def _miou_of(cm: np.ndarray) -> float:
    value = miou(cm)
    return float(value) if not math.isnan(value) else -1.0


# ---------------------------------------------------------------------------------------------
# Fitting each decision on a set of images
# ---------------------------------------------------------------------------------------------


def _fit_weights(data: _Oof, state: _State, index: np.ndarray, rounds: int) -> np.ndarray:
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


def _fit_bias(data: _Oof, state: _State, index: np.ndarray, rounds: int) -> np.ndarray:
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


def _fit_min_area(data: _Oof, state: _State, index: np.ndarray, labels: np.ndarray
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

    def __init__(self, data: _Oof, start: _State):
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
                out[part] = _decide(members, states[k], self.data.num_classes)
        return out


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
    chains = _Chains(data, _State(start))
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
        new = {}
        for key, state in chains.states.items():
            index = chains.fit_index(key)
            if decision == "weights":
                new[key] = state.replace(weights=_fit_weights(data, state, index, rounds))
            elif decision == "class_bias":
                new[key] = state.replace(bias=_fit_bias(data, state, index, rounds))
            else:
                labels = chains.labels({key: state}, key)
                areas, _ = _fit_min_area(data, state, index, labels)
                new[key] = state.replace(min_area=areas)
        after_labels = chains.labels(new)
        before_cm = data.confusion(before_labels, everything)
        after_cm = data.confusion(after_labels, everything)
        before_folds = _per_fold_miou(data.confusion(before_labels, everything, by_fold=True))
        after_folds = _per_fold_miou(data.confusion(after_labels, everything, by_fold=True))
        gains = [a - b for a, b in zip(after_folds, before_folds)]
        gain = float(miou(after_cm) - miou(before_cm))
        noise = float(np.std(gains, ddof=1) / math.sqrt(len(gains)))
        kept = bool(gain > 0 and gain > margin * noise)
        if kept:
            why = (f"OOF mIoU {gain:+.4f} (cross-fitted) is above the noise {margin:g} x "
                   f"{noise:.4f}")
        elif gain <= 0:
            why = f"OOF mIoU {gain:+.4f} (cross-fitted): does not improve the OOF score"
        else:
            why = (f"OOF mIoU {gain:+.4f} (cross-fitted) is within the noise {margin:g} x "
                   f"{noise:.4f}: not shown to help")
        fitted = _parameters(decision, new["all"], data.classes, names)
        in_sample = data.confusion(chains.labels(new, "all"), everything)
        steps.append({**entry, "tried": True, "kept": kept, "why": why, "fitted": fitted,
                      "oof_before": _scored(before_cm, data.classes),
                      "oof_after": _scored(after_cm, data.classes),
                      "gain": gain, "noise": noise, "per_fold_gain": gains,
                      "per_fold_before": before_folds, "per_fold_after": after_folds,
                      "in_sample_after": float(miou(in_sample))})
        if kept:
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


def _parameters(decision: str, state: _State, classes: list[str], names: list[str]) -> dict:
    if decision == "weights":
        return dict(zip(names, state.weights.tolist()))
    if decision == "class_bias":
        return {k: float(v) / UNIT for k, v in zip(classes, state.bias)}
    return {k: int(v) for k, v in zip(classes, state.min_area)}


# ---------------------------------------------------------------------------------------------
# The record: decisions.json, tables, applying to test predictions
# ---------------------------------------------------------------------------------------------


@dataclass
class Decisions:
    """What `fit_decisions` decided (`record`: decisions.json's content) and where it is
    stored (`path`, once written or read)."""

    record: dict
    path: Path | None = None

    @property
    def members(self) -> list[str]:
        return list(self.record["members"])

    @property
    def classes(self) -> list[str]:
        return list(self.record["classes"])

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.record["size"])

    @property
    def weights(self) -> list[float]:
        """The members' soft-vote weights: fitted when the weights decision was kept, else
        the start weights."""
        return list(self.record["final"]["weights"])

    @property
    def kept(self) -> list[str]:
        return [s["decision"] for s in self.record["steps"] if s["kept"]]

    @property
    def miou_before(self) -> float:
        return float(self.record["before"]["mIoU"])

    @property
    def miou_after(self) -> float:
        """OOF mIoU with the kept decisions (cross-fitted)."""
        return float(self.record["after"]["mIoU"])

    def _bias_units(self):
        bias = self.record["final"].get("class_bias")
        return None if not bias else np.array([round(bias[k] * UNIT) for k in self.classes],
                                              np.int32)

    def _min_area(self):
        areas = self.record["final"].get("min_area")
        return None if not areas else [int(areas[k]) for k in self.classes]

    def labels(self, probs: np.ndarray) -> np.ndarray:
        """The decided label map of one image's voted uint8 probabilities (C, H, W)."""
        label = _labels(probs, self._bias_units())
        areas = self._min_area()
        return label if areas is None else _remove_small(label, areas, len(self.classes))

    def summary(self):
        """One row per decision: tried, kept, OOF mIoU before and after (cross-fitted), the
        gain, the noise, the per-fold gains, why."""
        import pandas as pd

        rows = []
        for s in self.record["steps"]:
            rows.append({"decision": s["decision"], "tried": s["tried"], "kept": s["kept"],
                         "OOF before": s.get("oof_before", {}).get("mIoU"),
                         "OOF after": s.get("oof_after", {}).get("mIoU"),
                         "gain": s.get("gain"), "noise": s.get("noise"),
                         "per-fold gains": ", ".join(f"{g:+.4f}" for g in
                                                     s.get("per_fold_gain", [])),
                         "why": s["why"]})
        return pd.DataFrame(rows)

    def table(self):
        """Per-class IoU (rows: classes, then mIoU) out of fold before any decision and after
        each decision tried (cross-fitted), the column naming whether it was kept."""
        import pandas as pd

        def column(scored):
            return [scored["per_class"].get(k) for k in self.classes] + [scored["mIoU"]]

        columns = {"before": column(self.record["before"])}
        for s in self.record["steps"]:
            if s["tried"]:
                columns[f"{s['decision']} ({'kept' if s['kept'] else 'not kept'})"] = \
                    column(s["oof_after"])
        columns["after (kept ones)"] = column(self.record["after"])
        return pd.DataFrame(columns, index=self.classes + ["mIoU"], dtype=float)

    def report(self) -> str:
        """What `segkit decide` prints."""
        import pandas as pd

        fitted = []
        for s in self.record["steps"]:
            if s["tried"]:
                values = ", ".join(f"{k} {v:g}" for k, v in s["fitted"].items()
                                   if s["decision"] == "weights" or v)
                fitted.append(f"{s['decision']}: {'kept' if s['kept'] else 'not kept'}: "
                              f"{s['why']}; fitted on all: {values or 'nothing changed'}")
            else:
                fitted.append(f"{s['decision']}: not tried ({s['why']})")
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            table = self.table().to_string(float_format=lambda v: f"{v:.4f}", na_rep="absent")
        where = f" -> {self.path}" if self.path else ""
        return "\n".join([f"decisions on {self.record['images']} OOF images of "
                          f"{self.record['folds']} folds ({', '.join(self.members)}){where}",
                          f"rule: {self.record['rule']}", "", *fitted, "", table, "",
                          f"OOF mIoU: {self.miou_before:.4f} before, {self.miou_after:.4f} "
                          f"with the kept decisions ({', '.join(self.kept) or 'none'})"])


def decisions_dir(name: str) -> Path:
    """outputs/decisions/<name>/"""
    return outputs_dir() / "decisions" / name


def write_decisions(decisions: Decisions, name: str) -> Path:
    """decisions.json in outputs/decisions/<name>/ (written whole)."""
    path = decisions_dir(name) / "decisions.json"
    write_text_atomic(path, json.dumps(decisions.record, indent=1))
    decisions.path = path
    return path


def load_decisions(path: str | os.PathLike) -> Decisions:
    """A decisions.json (a file, or its outputs/decisions/<name> folder or name); a missing
    or malformed one is a SegkitError naming it."""
    given = Path(path)
    candidates = [given, given / "decisions.json", decisions_dir(str(path)) / "decisions.json"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise SegkitError(f"{path}: no decisions.json there (write one with `segkit decide` or "
                          "07_ensemble's decisions=fit)")
    try:
        record = json.loads(found.read_text())
        record["classes"], record["size"], record["final"]["weights"], record["steps"]
        record["after"]["mIoU"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SegkitError(f"{found}: not a decisions file ({exc})") from None
    return Decisions(record, found.resolve())


def decided_submission(decisions: Decisions, test_dirs: Sequence[str | os.PathLike],
                       weights: Sequence[float] | None, out_csv: str | os.PathLike,
                       test_json: str | os.PathLike | None = None) -> Path:
    """The submission of test prediction folders voted with `weights` (one per folder; None:
    equal), rounded to uint8, with the decisions' class biases and minimum areas applied;
    checked against `test_json` (a SubmissionError names the first problem)."""
    from segkit.core.errors import SubmissionError
    from segkit.results.predictions import folder_weights
    from segkit.submission.files import submission_writer, validate_submission
    from segkit.submission.vote import refuse_overwriting_inputs

    folders = PredictionSet.open(test_dirs, minimum=1)
    where = decisions.path or "the decisions"
    if folders.classes != decisions.classes:
        raise SegkitError(f"{where}: decided for classes {decisions.classes}, the test "
                          f"predictions have {folders.classes}")
    if tuple(folders.size or ()) != decisions.size:
        raise SegkitError(f"{where}: decided at size {list(decisions.size)} (regions in pixels "
                          f"there), the test probabilities are {folders.size}: predict at the "
                          "OOF predictions' out_size")
    checked, _ = folder_weights(weights, len(folders.dirs))
    total = float(np.sum(checked))
    out_csv = Path(out_csv)
    refuse_overwriting_inputs(out_csv, [d / "submission.csv" for d in folders.dirs])
    with submission_writer(out_csv, len(folders.classes), decisions.size) as writer:
        for image in folders.images:
            acc = folders.weighted_sum(image["id"], weights)
            q = np.clip(np.rint(acc / total), 0, 255).astype(np.uint8)
            writer.write_row(image["file_name"], decisions.labels(q))
    if test_json is not None:
        problems = validate_submission(out_csv, test_json, num_classes=len(folders.classes),
                                       size=decisions.size)
        if problems:
            raise SubmissionError(f"{out_csv}: {problems[0]}")
    return out_csv
