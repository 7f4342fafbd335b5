"""Voting on arrays: hard vote (weighted, deterministic ties) over label maps and submission
CSVs, the argmax of summed probabilities, and a per-pixel disagreement map.

Hard vote tie rule (one rule for every pixel). Models are ranked by weight, highest first,
then by their position in the input list. A class's score at a pixel is the sum of the weights
of the models voting for it. The pixel takes the class with the highest score; when several
classes share that score, it takes the one voted for by the best-ranked model among all models
voting for any of the tied classes. So with equal weights, permuting the inputs can change
only pixels where two or more classes tie exactly.

Soft vote: the weighted sum of the models' quantised probabilities, argmax per pixel (a tie
between classes goes to the lower class index); segkit.predict.ensemble applies it to prediction
folders.

Example:
    >>> import numpy as np
    >>> votes = np.array([[0, 1, 2], [1, 1, 0], [2, 0, 0]], np.uint8)   # 3 models, 3 pixels
    >>> weighted_vote(votes, num_classes=3)
    array([0, 1, 0], dtype=uint8)
    >>> weighted_vote(votes, weights=[1, 1, 3], num_classes=3)
    array([2, 0, 0], dtype=uint8)
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from segkit.core.errors import ParameterError, SubmissionError
from segkit.submission.codec import NUM_CLASSES, SUBMISSION_SIZE
from segkit.submission.files import submission_writer
from segkit.submission.reader import iter_submission


def check_weights(weights: Sequence[float] | None, count: int, what: str) -> np.ndarray:
    """float64 weights, one per input, non-negative with a positive sum."""
    if weights is None:
        return np.ones(count)
    weights = list(weights)
    if len(weights) != count:
        raise ParameterError(f"{len(weights)} weights for {count} {what}: give one weight each")
    try:
        array = np.array([float(w) for w in weights])
    except (TypeError, ValueError):
        raise ParameterError(f"weights must be numbers, got {weights!r}") from None
    if not np.isfinite(array).all() or (array < 0).any() or array.sum() <= 0:
        raise ParameterError(f"weights must be finite, >= 0 and not all 0, got {weights!r}")
    return array


def model_ranking(weights: Sequence[float]) -> list[int]:
    """Input positions in tie-breaking order: highest weight first, then earlier listed.

    Example:
        >>> model_ranking([1, 2, 1, 2])
        [1, 3, 0, 2]
    """
    return sorted(range(len(weights)), key=lambda i: (-float(weights[i]), i))


def _exact_weights(weights: np.ndarray) -> tuple[np.ndarray, type]:
    """The weights in the cheapest type that sums them exactly.

    Weights that are whole numbers after scaling by a common denominator (1, 2, 0.5, 0.25:
    any float is a fraction, and these have small ones) become small integers: uint8 when
    they sum below 256, which makes the vote fast, else int64. Others stay float64, summed
    in ranking order so that equal sums come out bit-identical.
    """
    fractions = [Fraction(float(w)) for w in weights]
    scale = math.lcm(*(f.denominator for f in fractions))
    scaled = [int(f * scale) for f in fractions]
    divisor = math.gcd(*scaled)
    total = sum(scaled) // divisor
    if total < 256:
        return np.array([w // divisor for w in scaled], np.uint8), np.uint8
    if total < 2**62:
        return np.array([w // divisor for w in scaled], np.int64), np.int64
    return np.asarray(weights, np.float64), np.float64


def weighted_vote(labels: np.ndarray, weights: Sequence[float] | None = None,
                  num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Per-pixel weighted majority of M label maps `labels` (M, ...) -> uint8 (...).

    Ties follow the module's rule: among the classes with the highest summed weight, the one
    voted for by the best-ranked model (highest weight, then earliest) wins.

    Example:
        >>> weighted_vote(np.array([[3], [4]]), num_classes=5)   # a 1-1 tie: first model wins
        array([3], dtype=uint8)
    """
    labels = np.asarray(labels)
    if labels.ndim < 2 or labels.shape[0] < 1:
        raise ParameterError(f"labels must be (models, ...) with at least one model, got shape "
                             f"{labels.shape}")
    weights = check_weights(weights, labels.shape[0], "label maps")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ParameterError(f"labels must lie in 0..{num_classes - 1}")
    order = model_ranking(weights)
    ranked = labels[order].reshape(len(order), -1).astype(np.uint8, copy=False)
    return _vote_ranked(ranked, weights[order]).reshape(labels.shape[1:])


def _vote_ranked(ranked: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The vote of (M, P) labels already in ranking order, with their weights.

    Instead of a score per class, each model gets the score of the class it voted for: the
    summed weight of the models agreeing with it. The winner is the best-ranked model holding
    the highest score: its class is the top class, and among tied classes the one with the
    best-ranked voter. M*M comparisons of uint8 rows, no per-class arrays.
    """
    count = ranked.shape[0]
    weights, dtype = _exact_weights(weights)
    agree = {}
    for a, b in itertools.combinations(range(count), 2):
        agree[a, b] = agree[b, a] = ranked[a] == ranked[b]
    term = np.empty(ranked.shape[1], dtype)
    winner_score = np.zeros(ranked.shape[1], dtype)
    winner_label = ranked[0].copy()
    score = np.empty_like(winner_score)
    change = np.empty_like(winner_label)
    for model in range(count):
        score.fill(0)
        for voter in range(count):  # ranking order: equal sums come out bit-identical
            if voter == model:
                score += weights[voter]
            elif weights[voter] == 1:
                np.add(score, agree[model, voter], out=score, casting="unsafe")
            elif weights[voter]:
                np.multiply(agree[model, voter], weights[voter], out=term)
                score += term
        # Strictly greater: an equal score leaves the better-ranked model's class in place.
        better = score > winner_score
        np.maximum(winner_score, score, out=winner_score)
        take_where(winner_label, ranked[model], better, change)
    return winner_label


def take_where(target: np.ndarray, source: np.ndarray, mask: np.ndarray,
                change: np.ndarray) -> None:
    """target[mask] = source[mask] for uint8 arrays, as wrapping arithmetic: several times
    faster than boolean indexing or np.copyto(where=) on a scattered mask."""
    np.subtract(source, target, out=change)
    np.multiply(change, mask.view(np.uint8), out=change)
    np.add(target, change, out=target)


def disagreement(label_maps: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Per pixel, the fraction of models whose label differs from their equal-weight vote.

    Example:
        >>> disagreement(np.array([[0, 1], [0, 2], [0, 2]]))
        array([0.        , 0.33333334], dtype=float32)
    """
    labels = np.asarray(label_maps)
    if labels.ndim < 2 or labels.shape[0] < 2:
        raise ParameterError(f"disagreement needs at least two label maps, got shape "
                             f"{labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or int(labels.min()) < 0 \
            or int(labels.max()) > 255:
        raise ParameterError("label maps must hold integers 0..255")
    vote = weighted_vote(labels, num_classes=256)
    return (labels != vote).mean(axis=0, dtype=np.float32)


_END = object()


def hard_vote(csv_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike,
              weights: Sequence[float] | None = None, num_classes: int = NUM_CLASSES,
              size: tuple[int, int] = SUBMISSION_SIZE) -> Path:
    """Weighted per-pixel majority of submission CSVs, written as a new submission.

    Reads the inputs row by row together (memory holds one row of each), checks they list
    the same images in the same order with valid rows, and writes atomically: on any error
    a SubmissionError names the file and row and no output exists.

    Example:
        hard_vote(["fold0.csv", "fold1.csv", "fold2.csv"], "vote.csv")
    """
    paths = [Path(p) for p in csv_paths]
    if len(paths) < 2:
        raise ParameterError(f"a hard vote needs at least 2 submissions, got {len(paths)}")
    weights = check_weights(weights, len(paths), "submissions")
    refuse_overwriting_inputs(out_path, paths)
    order = model_ranking(weights)
    ranked_weights = weights[order]
    readers = [iter_submission(p, num_classes, size) for p in paths]
    out_path = Path(out_path)
    with submission_writer(out_path, num_classes, size) as writer:
        for rows in itertools.zip_longest(*readers, fillvalue=_END):
            _check_same_row(paths, rows)
            ranked = np.stack([rows[i][2] for i in order])
            label_map = _vote_ranked(ranked, ranked_weights).reshape(size)
            writer.write_row(rows[0][1], label_map)
    return out_path


def refuse_overwriting_inputs(out_path: str | os.PathLike,
                              inputs: Sequence[str | os.PathLike]) -> None:
    """A ParameterError when the output is one of the inputs (compared by what the paths point
    at): writing it would replace an input before, or while, it is read."""
    out = Path(out_path).resolve()
    for path in inputs:
        if Path(path).resolve() == out:
            raise ParameterError(f"--out {out_path} is also an input ({path}): write the "
                                 "ensemble to another file")


def _check_same_row(paths: list[Path], rows: tuple) -> None:
    """All inputs are at the same image; else a SubmissionError naming the file and row."""
    ref = next(k for k, r in enumerate(rows) if r is not _END)
    ref_row, ref_name = rows[ref][0], rows[ref][1]
    for path, other in zip(paths, rows, strict=True):
        if other is _END:
            raise SubmissionError(
                f"{path}: has no row {ref_row}, but {paths[ref]} row {ref_row} has image "
                f"{ref_name!r}; inputs must list the same images in the same order")
        if other[1] != ref_name:
            raise SubmissionError(
                f"{path} row {other[0]}: image {other[1]!r}, but {paths[ref]} row {ref_row} "
                f"has {ref_name!r}; inputs must list the same images in the same order")


def argmax_classes(scores: np.ndarray) -> np.ndarray:
    """argmax over axis 0 of (C, H, W), lowest class on ties, as uint8. A running maximum
    over the few classes beats np.argmax(axis=0), which transposes a copy first."""
    best = scores[0].copy()
    label = np.zeros(scores.shape[1:], np.uint8)
    change = np.empty_like(label)
    for c in range(1, scores.shape[0]):
        better = scores[c] > best
        np.maximum(best, scores[c], out=best)
        take_where(label, np.full_like(label, c), better, change)
    return label
