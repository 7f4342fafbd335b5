"""Confusion matrix, mIoU, per-class IoU and accuracy, per-image mIoU.

The competition scores one confusion matrix summed over all test images; classes absent from
both prediction and truth are left out of the mean.

Example:
    >>> import numpy as np
    >>> truth = np.array([[0, 1], [1, 1]]); pred = np.array([[0, 1], [0, 1]])
    >>> round(miou(confusion_matrix(pred, truth, 2)), 3)
    0.583
"""

from __future__ import annotations

import numpy as np

from segkit.core.classes import IGNORE_INDEX


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(C, C) int64 counts, rows = truth, columns = prediction; `ignore_index` pixels skipped."""
    pred = np.asarray(pred).ravel()
    truth = np.asarray(truth).ravel()
    if pred.shape != truth.shape:
        raise ValueError(f"prediction has {pred.size} pixels, truth {truth.size}")
    keep = truth != ignore_index
    if not keep.all():
        pred, truth = pred[keep], truth[keep]
    index = truth.astype(np.int64) * num_classes + pred
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


class ConfusionMatrix:
    """Accumulates a confusion matrix over images.

    Example:
        cm = ConfusionMatrix(11)
        cm.update(pred, truth)
        cm.miou()
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """Add one image; returns that image's own matrix."""
        cm = confusion_matrix(pred, truth, self.num_classes, self.ignore_index)
        self.matrix += cm
        return cm

    def miou(self) -> float:
        return miou(self.matrix)

    def iou(self) -> np.ndarray:
        return per_class_iou(self.matrix)

    def accuracy(self) -> np.ndarray:
        return per_class_accuracy(self.matrix)


def iou_from_areas(intersection, union) -> np.ndarray:
    """IoU per class from summed pixel areas; nan where the union is empty (the class is in
    neither prediction nor truth)."""
    intersection, union = np.asarray(intersection, np.float64), np.asarray(union, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / union, np.nan)


def mean_iou(iou: np.ndarray) -> float:
    """Mean of per-class IoUs over the classes present (nan if none)."""
    iou = np.asarray(iou, np.float64)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU per class; nan where the class is in neither prediction nor truth."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    return iou_from_areas(tp, cm.sum(0) + cm.sum(1) - tp)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall per class (correct / truth pixels); nan where the class is absent from truth."""
    cm = np.asarray(cm, np.float64)
    truth = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(truth > 0, np.diag(cm) / truth, np.nan)


def miou(cm: np.ndarray) -> float:
    """Mean IoU over the classes present in prediction or truth (nan if none)."""
    return mean_iou(per_class_iou(cm))


def per_image_miou(preds, truths, num_classes: int, ignore_index: int = IGNORE_INDEX
                   ) -> np.ndarray:
    """mIoU of each (prediction, truth) pair on its own: low values flag hard or mislabelled
    images."""
    return np.array([miou(confusion_matrix(p, t, num_classes, ignore_index))
                     for p, t in zip(preds, truths)])
