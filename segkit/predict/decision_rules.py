"""Applying decisions to probabilities, in integer arithmetic: the weighted vote of members' uint8
probabilities, class biases added to tabulated log-probabilities, the argmax, and small
connected regions relabelled (segkit.predict.decisions fits them; decision_record applies
them to test predictions)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

UNIT = 1024  # log-probabilities and biases in units of 1/1024
AREA_GRID = (0, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


# log((q + 0.5) / 256) of a stored probability q = 0..255, in units of 1/1024: strictly
# increasing (steps of 4 units at least), so its argmax is the argmax of q, ties alike
# (int16: with biases within +-3 the sums stay within -9500..3100)
LOG_TABLE = np.round(np.log((np.arange(256) + 0.5) / 256) * UNIT).astype(np.int16)


_LOWEST = np.int16(-(2 ** 15))


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
class DecisionState:
    """What a chain of decisions holds: member weights, class biases (units), minimum
    areas per class (None: not decided)."""

    weights: np.ndarray
    bias: np.ndarray | None = None
    min_area: list | None = None

    def replace(self, **changes) -> DecisionState:
        return DecisionState(**{**self.__dict__, **changes})


def decide_labels(members: Sequence[np.ndarray], state: DecisionState, num_classes: int) -> np.ndarray:
    """Label maps (n, H, W) of members' probabilities (each (n, C, H, W)) under a state."""
    labels = _labels(_vote(members, state.weights), state.bias)
    if state.min_area is not None:
        labels = np.stack([_remove_small(lab, state.min_area, num_classes) for lab in labels])
    return labels
