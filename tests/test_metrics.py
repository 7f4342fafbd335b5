import numpy as np

from segkit.core.metrics import (
    ConfusionMatrix,
    confusion_matrix,
    miou,
    per_class_iou,
    per_image_miou,
)


def test_confusion_matrix_rows_are_truth():
    cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]


def test_ignore_index_is_skipped():
    cm = confusion_matrix(np.array([1, 1]), np.array([255, 1]), 2)
    assert cm.sum() == 1


def test_miou_leaves_out_absent_classes():
    cm = confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), 5)
    assert miou(cm) == 1.0
    iou = per_class_iou(cm)
    assert np.isnan(iou[2:]).all()


def test_miou_counts_false_positive_class():
    # class 2 predicted but absent from truth: IoU 0, and it stays in the mean
    cm = confusion_matrix(np.array([0, 2]), np.array([0, 0]), 3)
    assert np.isclose(miou(cm), 0.25)


def test_accumulated_equals_summed():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 4, (5, 5)) for _ in range(3)]
    truths = [rng.integers(0, 4, (5, 5)) for _ in range(3)]
    acc = ConfusionMatrix(4)
    for p, t in zip(preds, truths):
        acc.update(p, t)
    whole = confusion_matrix(np.stack(preds), np.stack(truths), 4)
    assert (acc.matrix == whole).all()
    assert len(per_image_miou(preds, truths, 4)) == 3
