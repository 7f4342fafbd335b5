"""Decisions on out-of-fold predictions (segkit.predict.decisions) on hand-made OOF folders:
a decision is kept only when it helps out of fold, by more than the fold-to-fold noise."""

import json

import numpy as np
import pytest

from segkit.core.errors import ParameterError, SegkitError
from segkit.core.metrics import confusion_matrix, miou
from segkit.predict.decision_data import oof_folds
from segkit.predict.decision_record import decided_submission, load_decisions, write_decisions
from segkit.predict.decisions import fit_decisions
from segkit.results.predictions import save_probs, write_prediction_meta
from segkit.submission.reader import read_submission

CLASSES = ["Background", "Object", "Thin"]
C = len(CLASSES)
SPOTS = [(2, 24), (24, 4), (28, 12), (12, 26), (18, 8)]


def _folder(path, probs: dict, split="val"):
    """A prediction folder of uint8 probabilities (id -> (C, H, W))."""
    images = []
    for image_id, q in probs.items():
        save_probs(path, image_id, q)
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": q.shape[2],
                       "height": q.shape[1]})
    write_prediction_meta(path, images, CLASSES, q.shape[1:], split)
    return path


def _confident(label, confidence=200):
    q = np.full((C, *label.shape), (255 - confidence) // (C - 1), np.uint8)
    np.put_along_axis(q, label[None].astype(np.int64), confidence, 0)
    return q


def _scene(false_specks=0, true_specks=0):
    """(truth, prediction) of 32x32: an Object square and a Thin square, predicted right,
    plus 2x2 Thin specks predicted where the truth is Background (false) or Thin (true)."""
    truth = np.zeros((32, 32), np.uint8)
    truth[4:16, 4:16] = 1
    truth[20:30, 20:30] = 2
    pred = truth.copy()
    for y, x in SPOTS[:false_specks]:
        pred[y:y + 2, x:x + 2] = 2
    for y, x in SPOTS[false_specks:false_specks + true_specks]:
        pred[y:y + 2, x:x + 2] = truth[y:y + 2, x:x + 2] = 2
    return truth, pred


def _case(tmp_path, scene_of_fold, name="m"):
    """9 images in 3 folds; returns (OOF folder, truth, folds)."""
    truth, probs, folds = {}, {}, {}
    for i in range(9):
        t, p = scene_of_fold(i // 3)
        truth[i], probs[i], folds[i] = t, _confident(p), i // 3
    return _folder(tmp_path / name, probs), truth, folds


def _oof_miou(decisions, folder, truth):
    """The OOF mIoU of the decisions applied image by image to the folder's probabilities."""
    from segkit.results.predictions import PredictionFolder

    f = PredictionFolder(folder)
    cm = sum(confusion_matrix(decisions.labels(f.probs(i)), truth[i], C) for i in truth)
    return miou(cm)


def test_a_small_region_removal_that_helps_is_kept(tmp_path):
    folder, truth, folds = _case(tmp_path, lambda k: _scene(false_specks=2))
    decisions = fit_decisions([folder], truth, ["m"], folds=folds)
    steps = {s["decision"]: s for s in decisions.record["steps"]}
    assert steps["weights"]["tried"] is False and "one member" in steps["weights"]["why"]
    assert steps["class_bias"]["kept"] is False  # the specks are as confident as the rest
    area = steps["min_area"]
    assert area["kept"] is True and area["gain"] > area["noise"] >= 0
    assert area["fitted"] == {"Background": 0, "Object": 0, "Thin": 8}  # 4-pixel specks go
    assert len(area["per_fold_gain"]) == 3 and all(g > 0 for g in area["per_fold_gain"])
    assert area["oof_before"]["per_class"]["Thin"] < area["oof_after"]["per_class"]["Thin"] == 1
    assert decisions.kept == ["min_area"] and decisions.miou_after == pytest.approx(1.0)
    assert _oof_miou(decisions, folder, truth) == pytest.approx(decisions.miou_after)
    table = decisions.table()
    assert list(table.columns) == ["before", "class_bias (not kept)", "min_area (kept)",
                                   "after (kept ones)"]
    assert list(table.index) == CLASSES + ["mIoU"]
    assert "min_area: kept" in decisions.report()
    # written, read back, applied to "test" predictions: the specks are gone
    path = write_decisions(decisions, "helps")
    again = load_decisions("helps")
    assert again.path == path.resolve() and again.record == json.loads(path.read_text())
    csv = decided_submission(again, [folder], None, tmp_path / "sub.csv")
    names, maps = read_submission(csv, C, (32, 32))
    assert names == [f"{i}.jpg" for i in range(9)]
    assert all((m.reshape(32, 32) == truth[i]).all() for i, m in enumerate(maps))


def test_a_decision_that_does_not_improve_oof_is_not_kept(tmp_path):
    """Folds 0 and 1 predict false Thin specks, fold 2 has real ones: fitted on all images,
    removing them looks good; fitted without each fold and applied to it, it hurts."""
    folder, truth, folds = _case(tmp_path, lambda k: _scene(false_specks=2) if k < 2
                                 else _scene(true_specks=3))
    decisions = fit_decisions([folder], truth, ["m"], folds=folds)
    area = next(s for s in decisions.record["steps"] if s["decision"] == "min_area")
    assert area["tried"] and area["kept"] is False
    assert area["in_sample_after"] > area["oof_before"]["mIoU"]  # the flattering score
    assert area["gain"] < 0 and "does not improve" in area["why"]
    assert area["per_fold_gain"][2] < 0
    assert decisions.kept == [] and decisions.record["final"]["min_area"] is None
    assert decisions.miou_after == decisions.miou_before
    # nothing kept: the decided labels are the argmax
    assert _oof_miou(decisions, folder, truth) == pytest.approx(decisions.miou_before)


def test_a_gain_within_the_noise_is_not_kept(tmp_path):
    folder, truth, folds = _case(tmp_path, lambda k: _scene(false_specks=2) if k < 2
                                 else _scene(true_specks=3))
    margin_zero = fit_decisions([folder], truth, ["m"], folds=folds, tried=["min_area"],
                                margin=0.0)
    area = margin_zero.record["steps"][2]
    assert area["kept"] is False  # a loss is never kept, whatever the margin
    folder, truth, folds = _case(tmp_path, lambda k: _scene(false_specks=2) if k != 1
                                 else _scene(), name="noisy")
    noisy = fit_decisions([folder], truth, ["m"], folds=folds, tried=["min_area"], margin=5)
    area = noisy.record["steps"][2]
    assert area["gain"] > 0 and area["kept"] is False and "within the noise" in area["why"]
    assert fit_decisions([folder], truth, ["m"], folds=folds, tried=["min_area"]
                         ).record["steps"][2]["kept"] is True


def test_a_class_bias_for_an_under_called_class_is_kept_and_exact(tmp_path):
    """The Thin class's pixels get probability 0.40 against Background's 0.45: a bias on
    Thin's log-probability recovers them; the fitted bias scores as its histogram said."""
    truth, probs, folds = {}, {}, {}
    for i in range(9):
        t, _ = _scene()
        q = _confident(t)
        thin = t == 2
        q[0][thin], q[1][thin], q[2][thin] = 115, 38, 102  # argmax Background
        truth[i], probs[i], folds[i] = t, q, i // 3
    folder = _folder(tmp_path / "bias", probs)
    decisions = fit_decisions([folder], truth, ["m"], folds=folds, tried=["class_bias"])
    bias = decisions.record["steps"][1]
    assert bias["kept"] is True and decisions.miou_after == pytest.approx(1.0)
    fitted = decisions.record["final"]["class_bias"]
    assert fitted["Thin"] - fitted["Background"] > 0  # Thin up against Background
    assert _oof_miou(decisions, folder, truth) == pytest.approx(decisions.miou_after)
    assert bias["in_sample_after"] == pytest.approx(_oof_miou(decisions, folder, truth))


def test_member_weights_fitted_beyond_equal_votes(tmp_path):
    rng = np.random.default_rng(0)
    truth, good, bad, folds = {}, {}, {}, {}
    for i in range(9):
        t, _ = _scene()
        noisy = np.where(rng.random(t.shape) < 0.5, rng.integers(0, C, t.shape), t)
        truth[i], folds[i] = t, i // 3
        good[i], bad[i] = _confident(t, 150), _confident(noisy.astype(np.uint8), 250)
    dirs = [_folder(tmp_path / "good", good), _folder(tmp_path / "bad", bad)]
    decisions = fit_decisions(dirs, truth, ["good", "bad"], folds=folds, tried=["weights"])
    weights = decisions.record["steps"][0]
    assert weights["kept"] is True
    assert decisions.weights[0] > decisions.weights[1]
    assert decisions.miou_after > decisions.miou_before
    # applied to test folders with the fitted weights: the good member's labels
    csv = decided_submission(decisions, dirs, decisions.weights, tmp_path / "w.csv")
    _, maps = read_submission(csv, C, (32, 32))
    assert all((m.reshape(32, 32) == truth[i]).all() for i, m in enumerate(maps))


def test_bad_inputs(tmp_path):
    folder, truth, folds = _case(tmp_path, lambda k: _scene(false_specks=1))
    with pytest.raises(SegkitError, match="not an out-of-fold prediction"):
        oof_folds(folder)
    with pytest.raises(SegkitError, match="one fold only"):
        fit_decisions([folder], truth, folds={i: 0 for i in truth})
    with pytest.raises(ParameterError, match="decisions \\['bias'\\]"):
        fit_decisions([folder], truth, folds=folds, tried=["bias"])
    with pytest.raises(ParameterError, match="no fold for image ids"):
        fit_decisions([folder], truth, folds={0: 0, 1: 1})
    with pytest.raises(SegkitError, match="no decisions.json"):
        load_decisions(tmp_path / "nowhere")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SegkitError, match="not a decisions file"):
        load_decisions(tmp_path / "bad.json")
    decisions = fit_decisions([folder], truth, folds=folds, tried=["min_area"])
    small = _folder(tmp_path / "small", {1: _confident(np.zeros((16, 16), np.uint8))}, "test")
    with pytest.raises(SegkitError, match="decided at size \\[32, 32\\]"):
        decided_submission(decisions, [small], None, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_folds_from_an_oof_folder(tmp_path, tiny_coco):
    from segkit.coco.files import load_coco, subset, write_coco

    (tmp_path / "all.json").write_text(json.dumps(tiny_coco))
    coco = load_coco(tmp_path / "all.json")
    write_coco(subset(coco, [1]), tmp_path / "fold0_val.json")
    write_coco(subset(coco, [2]), tmp_path / "fold1_val.json")
    folder = _folder(tmp_path / "oof", {1: _confident(np.zeros((4, 4), np.uint8)),
                                        2: _confident(np.zeros((4, 4), np.uint8))})
    meta = json.loads((folder / "meta.json").read_text())
    meta["oof"] = {"val_files": [str(tmp_path / "fold0_val.json"),
                                 str(tmp_path / "fold1_val.json")]}
    (folder / "meta.json").write_text(json.dumps(meta))
    assert oof_folds(folder) == {1: 0, 2: 1}
