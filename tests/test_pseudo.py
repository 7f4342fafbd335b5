"""Pseudo labels: threshold semantics, averaging, the training source they make, and the loss
really ignoring 255."""

import json
import os

import numpy as np
import pytest
import torch

from segkit.coco.files import load_coco, read_label, write_coco
from segkit.core.classes import IGNORE_INDEX, TRASH
from segkit.core.errors import ParameterError, SegkitError
from segkit.flow.notebook import notebook_parameters
from segkit.flow.round2 import round2_parameters
from segkit.predict.pseudo import check_threshold, label_from_probs, pseudo_labels, round_comparison
from segkit.recipe.losses import LOSS_TERMS
from segkit.recipe.parameters import LOSSES, TRAINING_PARAMETERS
from segkit.results.predictions import save_probs, write_prediction_meta
from segkit.train.sources import data_list, resolve_source

C = len(TRASH)


def _probs(top_class: np.ndarray, top_q: np.ndarray) -> np.ndarray:
    """uint8 (C, H, W) probabilities: `top_q` (quantised) on `top_class`, the rest spread over
    the other classes so every pixel sums to about 255."""
    h, w = top_class.shape
    rest = (255 - top_q.astype(np.int32)) // (C - 1)
    q = np.broadcast_to(rest, (C, h, w)).astype(np.uint8).copy()
    np.put_along_axis(q, top_class[None].astype(np.int64), top_q[None].astype(np.uint8), 0)
    return q


def _folder(path, images, probs_by_id, size, source=None):
    for image_id, q in probs_by_id.items():
        save_probs(path, image_id, q)
    write_prediction_meta(path, images, TRASH.names, size, "test",
                          **({"source": str(source)} if source else {}))
    return path


@pytest.fixture
def small_test(tmp_path):
    """A two-image test COCO (images 12x16 and 12x16 px, never read) and its data root."""
    root = tmp_path / "data"
    root.mkdir()
    images = [{"id": 7, "file_name": "a/7.jpg", "width": 16, "height": 12},
              {"id": 3, "file_name": "a/3.jpg", "width": 16, "height": 12}]
    categories = [{"id": i, "name": n} for i, n in enumerate(TRASH.names) if i]
    path = write_coco({"images": images, "annotations": [], "categories": categories},
                      root / "test.json")
    return path, images


def test_threshold_exactly_reached_is_kept(small_test, tmp_path):
    test_json, images = small_test
    cls = np.zeros((12, 16), np.uint8)
    cls[:, 8:] = 4
    top = np.full((12, 16), 229, np.uint8)  # 229/255 = 0.898
    top[:6] = 228
    top[:, 12:] = 255
    pred = _folder(tmp_path / "pred", images, {7: _probs(cls, top), 3: _probs(cls, top)},
                   (12, 16), test_json)
    result = pseudo_labels(pred, tmp_path / "out", threshold=229 / 255)
    label = read_label(tmp_path / "out" / "labels" / "7.png")
    assert label.dtype == np.uint8 and label.shape == (12, 16)
    expected = np.where(top >= 229, cls, IGNORE_INDEX)
    np.testing.assert_array_equal(label, expected)
    assert (label == IGNORE_INDEX).any() and (label == 4).any() and (label == 0).any()
    # threshold 1: only the pixels at probability 1 (255) survive
    pseudo_labels(pred, tmp_path / "out1", threshold=1.0)
    np.testing.assert_array_equal(read_label(tmp_path / "out1" / "labels" / "3.png"),
                                  np.where(top == 255, cls, IGNORE_INDEX))
    # the report: per class predicted / kept pixels over both images
    report = result.report
    assert report.loc["Background", "predicted_pixels"] == 2 * 12 * 8
    assert report.loc["Metal", "kept_pixels"] == 2 * int((expected == 4).sum())
    assert report.loc["Background", "share_kept"] == pytest.approx(
        (expected[:, :8] == 0).mean())
    assert report["share_of_all"].sum() == pytest.approx((expected != IGNORE_INDEX).mean())
    assert np.isnan(report.loc["Battery", "share_kept"])
    assert result.kept_share[7] == pytest.approx((expected != IGNORE_INDEX).mean())


def test_label_from_probs_ties_and_bad_input():
    p = np.zeros((3, 1, 2), np.float32)
    p[1] = p[2] = 0.5  # a tie goes to the lower class
    p[0, 0, 1], p[1, 0, 1], p[2, 0, 1] = 0.0, 0.0, 1.0
    np.testing.assert_array_equal(label_from_probs(p, 0.5), [[1, 2]])
    np.testing.assert_array_equal(label_from_probs(p, 0.6), [[255, 2]])
    with pytest.raises(ParameterError, match="classes, H, W"):
        label_from_probs(p[0], 0.5)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.01, 2, float("nan"), True, "0.9", None])
def test_bad_threshold_writes_nothing(bad, small_test, tmp_path):
    test_json, images = small_test
    q = _probs(np.zeros((12, 16), np.uint8), np.full((12, 16), 255, np.uint8))
    pred = _folder(tmp_path / "pred", images, {7: q, 3: q}, (12, 16), test_json)
    with pytest.raises(ParameterError, match=r"threshold .*\(0, 1\]"):
        pseudo_labels(pred, tmp_path / "pseudo" / "out", threshold=bad)
    assert not (tmp_path / "pseudo").exists()
    with pytest.raises(ParameterError):
        check_threshold(bad)


def test_several_sources_are_averaged_with_weights(small_test, tmp_path):
    test_json, images = small_test
    cls = np.full((12, 16), 2, np.uint8)
    a = _probs(cls, np.full((12, 16), 255, np.uint8))  # 1.0
    b = _probs(cls, np.full((12, 16), 204, np.uint8))  # 0.8
    b_other = _probs(np.full((12, 16), 5, np.uint8), np.full((12, 16), 204, np.uint8))
    pa = _folder(tmp_path / "a", images, {7: a, 3: a}, (12, 16), test_json)
    pb = _folder(tmp_path / "b", images, {7: b, 3: b_other}, (12, 16), test_json)
    pseudo_labels([pa, pb], tmp_path / "mean", threshold=0.9)
    # image 7: mean 0.9 on class 2 -> kept; image 3: 0.5 on class 2, 0.4 on 5 -> ignored
    assert (read_label(tmp_path / "mean" / "labels" / "7.png") == 2).all()
    assert (read_label(tmp_path / "mean" / "labels" / "3.png") == IGNORE_INDEX).all()
    pseudo_labels([pa, pb], tmp_path / "weighted", threshold=0.9, weights=[1, 3])
    assert (read_label(tmp_path / "weighted" / "labels" / "7.png") == IGNORE_INDEX).all()  # 0.85
    pseudo_labels([pa, pb], tmp_path / "only_b", threshold=0.5, weights=[0, 1])
    assert (read_label(tmp_path / "only_b" / "labels" / "3.png") == 5).all()
    meta = json.loads((tmp_path / "weighted" / "meta.json").read_text())
    assert meta["weights"] == [1.0, 3.0] and meta["threshold"] == 0.9


def test_sources_must_cover_the_same_images(small_test, tmp_path):
    test_json, images = small_test
    q = _probs(np.zeros((12, 16), np.uint8), np.full((12, 16), 255, np.uint8))
    pa = _folder(tmp_path / "a", images, {7: q, 3: q}, (12, 16), test_json)
    pb = _folder(tmp_path / "b", images[:1], {7: q}, (12, 16), test_json)
    with pytest.raises(SegkitError, match=rf"{tmp_path / 'b'}.*lacks image ids \[3\]"):
        pseudo_labels([pa, pb], tmp_path / "out", threshold=0.9)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    # a prediction of an image the test file does not list
    other = [{"id": 99, "file_name": "x.jpg", "width": 16, "height": 12}]
    pc = _folder(tmp_path / "c", other, {99: q}, (12, 16), test_json)
    with pytest.raises(SegkitError, match="image id 99 .*not in"):
        pseudo_labels(pc, tmp_path / "out", threshold=0.9)
    with pytest.raises(ParameterError, match="2 weights for 1 prediction folders"):
        pseudo_labels(pa, tmp_path / "out", weights=[1, 2])
    assert not (tmp_path / "out").exists()


def test_classes_must_match_the_test_file(small_test, tmp_path):
    test_json, images = small_test
    data = json.loads(test_json.read_text())
    data["categories"][4]["name"] = "Cardboard"  # not a trash class: another class table
    other = write_coco(data, tmp_path / "other.json")
    q = _probs(np.zeros((12, 16), np.uint8), np.full((12, 16), 255, np.uint8))
    pred = _folder(tmp_path / "pred", images, {7: q, 3: q}, (12, 16))  # no source recorded
    with pytest.raises(ParameterError, match="pass test_json"):
        pseudo_labels(pred, tmp_path / "out")
    # refused by the class-table check of the file, or as classes other than the predicted
    with pytest.raises(SegkitError, match="Cardboard"):
        pseudo_labels(pred, tmp_path / "out", test_json=other)
    assert not (tmp_path / "out").exists()


def test_upsampled_to_full_size_and_deterministic(small_test, tmp_path):
    test_json, images = small_test
    big = [dict(img, width=64, height=48) for img in images]
    data = json.loads(test_json.read_text())
    data["images"] = big
    test_big = write_coco(data, tmp_path / "data" / "big.json")
    cls = np.zeros((6, 8), np.uint8)
    cls[:, 4:] = 6
    q = _probs(cls, np.full((6, 8), 250, np.uint8))
    pred = _folder(tmp_path / "pred", big, {7: q, 3: q}, (6, 8), test_big)
    pseudo_labels(pred, tmp_path / "p1" / "run", threshold=0.9)
    pseudo_labels(pred, tmp_path / "p2" / "run", threshold=0.9)
    label = read_label(tmp_path / "p1" / "run" / "labels" / "7.png")
    assert label.shape == (48, 64)
    assert (label[:, :28] == 0).all() and (label[:, 36:] == 6).all()
    # bilinear upsampling: the class border is half-way, and near it nothing is confident
    assert (label[:, 28:36] == IGNORE_INDEX).any()
    for name in ("pseudo.json", "report.csv", "meta.json", "labels/7.png", "labels/3.png"):
        assert (tmp_path / "p1" / "run" / name).read_bytes() == \
            (tmp_path / "p2" / "run" / name).read_bytes(), name


def test_pseudo_json_is_a_training_source(sample_root, tmp_path):
    test_json = sample_root / "test.json"
    coco = load_coco(test_json)
    probs = {img["id"]: _probs(np.full((256, 256), 1 + img["id"] % 10, np.uint8),
                               np.full((256, 256), 240, np.uint8)) for img in coco.images}
    pred = _folder(tmp_path / "pred", coco.images, probs, (256, 256), test_json)
    result = pseudo_labels(pred, tmp_path / "outputs" / "pseudo" / "t", threshold=0.9,
                           data_root=sample_root)
    data = json.loads(result.coco_path.read_text())
    assert data["annotations"] == [] and data["categories"] == coco.categories
    assert not os.path.isabs(data["segkit"]["image_root"])
    assert [img["seg_map"] for img in data["images"]] == \
        [f"labels/{img['id']}.png" for img in coco.images]
    ann_file, root = resolve_source(result.coco_path)
    assert root.resolve() == sample_root.resolve()
    infos = data_list([result.coco_path], TRASH)
    assert [i["image_id"] for i in infos] == [img["id"] for img in coco.images]
    for info, img in zip(infos, coco.images):
        assert os.path.exists(info["img_path"])
        assert info["seg_map_path"] == str(result.out_dir / "labels" / f"{img['id']}.png")
        assert (read_label(info["seg_map_path"]) == 1 + img["id"] % 10).all()
    # a folder moved with its data keeps working: the image root is relative
    assert result.report.loc["Background", "predicted_pixels"] == 0


# ---------------------------------------------------------------------------------------------
# The ignore index in the losses
# ---------------------------------------------------------------------------------------------

def _head_loss(head, logits, label):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    samples = []
    for lab in label:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=lab[None])
        samples.append(sample)
    losses = head.loss_by_feat(logits, samples)
    return sum(v for k, v in losses.items() if k.startswith("loss"))


@pytest.mark.parametrize("loss,class_weights", [(loss, None) for loss in LOSSES] +
                         [(term, None) for term in LOSS_TERMS if term not in LOSSES] +
                         [("ce", "weighted"), ("focal", "weighted"), ("ce+dice", "weighted"),
                          ("lovasz", "weighted"), ("ohem", "weighted"),
                          ("smooth_ce", "weighted"), ("ce:1.0+lovasz:0.5", None)])
def test_ignored_pixels_do_not_reach_the_loss(loss, class_weights, sample_root):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from segkit.train.training import build_config
    from tests.conftest import tiny_train_params

    weights = [1.0 + 0.25 * i for i in range(C)] if class_weights else None
    cfg = build_config(**tiny_train_params(sample_root, loss=loss, class_weights=weights,
                                           weights="none"))
    init_default_scope("mmseg")
    head = MODELS.build(cfg["model"]).decode_head
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, C, (2, 16, 16), generator=gen)
    ignored = torch.zeros_like(label, dtype=torch.bool)
    ignored[0, :, :9] = True
    ignored[1, 5:12, 3:7] = True
    label[ignored] = IGNORE_INDEX
    logits = torch.randn(2, C, 16, 16, generator=gen, requires_grad=True)
    base = _head_loss(head, logits, label)
    base.backward()
    grad = logits.grad.permute(0, 2, 3, 1)  # (N, H, W, C)
    assert grad[~ignored].abs().sum() > 0
    assert grad[ignored].abs().max() == 0, f"{loss}: gradient reaches ignored pixels"

    changed = logits.detach().clone()
    noise = torch.randn(changed.shape, generator=gen) * 5
    changed += noise * ignored[:, None]
    assert torch.allclose(_head_loss(head, changed, label), base.detach(), rtol=0, atol=1e-6)
    # the loss does see the labelled pixels, and labelling the ignored ones changes it
    moved = logits.detach() + noise * (~ignored)[:, None]
    assert not torch.allclose(_head_loss(head, moved, label), base.detach(), atol=1e-4)
    relabelled = torch.where(ignored, torch.randint(0, C, label.shape, generator=gen), label)
    assert not torch.allclose(_head_loss(head, logits.detach(), relabelled), base.detach(),
                              atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Round 2
# ---------------------------------------------------------------------------------------------

def test_training_with_a_pseudo_source_runs(trained_run, sample_root, tmp_path):
    from segkit.predict.writing import predict_run
    from segkit.train.training import run
    from tests.conftest import tiny_train_params

    pred = predict_run(trained_run.work_dir, "test", coco_file=sample_root / "test.json",
                       data_root=sample_root, out_dir=tmp_path / "pred")
    result = pseudo_labels(pred, tmp_path / "pseudo", threshold=0.6)
    kept = result.report["kept_pixels"].sum()
    assert 0 < kept < result.report["predicted_pixels"].sum()
    seen = []
    original = data_list

    def spy(sources, classes, data_root=None):
        infos = original(sources, classes, data_root)
        seen.extend(infos)
        return infos

    import segkit.train.datasets as train_mod  # where the dataset reads its sources

    train_mod.data_list, saved = spy, train_mod.data_list
    try:
        out = run(**tiny_train_params(sample_root, iters=4, val_interval=4, weights="none",
                                      extra_train_files=[str(result.coco_path)],
                                      load_from=str(trained_run.best_checkpoint),
                                      work_dir=str(tmp_path / "round2")))
    finally:
        train_mod.data_list = saved
    pseudo_infos = [i for i in seen if i["source"] == str(result.coco_path)]
    n_test = len(load_coco(sample_root / "test.json").images)
    assert len(pseudo_infos) == n_test
    assert all(i["seg_map_path"].startswith(str(result.out_dir / "labels")) for i in pseudo_infos)
    assert out.last_checkpoint.name == "iter_4.pth"
    params = json.loads((tmp_path / "round2" / "params.json").read_text())
    assert params["extra_train_files"] == [str(result.coco_path)]


def test_round2_parameters_repeat_round1(trained_run, tmp_path):
    declared = notebook_parameters("04_train")
    assert declared == [p.name for p in TRAINING_PARAMETERS]
    params = round2_parameters(trained_run.work_dir, [tmp_path / "p.json"], "r2", iters=8)
    recorded = json.loads((trained_run.work_dir / "params.json").read_text())
    assert params["iters"] == 8 and params["run_name"] == "r2"
    assert params["extra_train_files"] == [str(tmp_path / "p.json")]
    assert params["load_from"] == str(trained_run.best_checkpoint)
    for key in ("train_file", "val_file", "image_size", "crop_size", "lr", "data_root"):
        assert params[key] == recorded[key]
    assert params["model"] == "efficientnet_lite0" and params["loss"] == "ce"  # run()'s defaults
    assert "work_dir" not in params and "resume" not in params
    assert round2_parameters(trained_run.work_dir, [], "r2", start="scratch")["load_from"] == ""
    assert round2_parameters(trained_run.work_dir, [], "r2", checkpoint="last")["load_from"] == \
        str(trained_run.last_checkpoint)
    with pytest.raises(ParameterError, match=r"no parameters \['itters'\]"):
        round2_parameters(trained_run.work_dir, [], "r2", itters=8)
    with pytest.raises(ParameterError, match="start='best'; allowed: round1, scratch"):
        round2_parameters(trained_run.work_dir, [], "r2", start="best")


def test_round_comparison(trained_run, tmp_path):
    table = round_comparison({"round 1": trained_run.work_dir, "again": trained_run.work_dir})
    assert table.loc["mIoU", "round 1"] == pytest.approx(trained_run.best_miou)
    assert list(table.index[:-1]) == list(trained_run.per_class_iou.index)
    assert (table["again - round 1"].dropna() == 0).all()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "params.json").write_text("{}")
    with pytest.raises(SegkitError, match="no validation results"):
        round_comparison({"x": tmp_path / "empty"})


def test_masked_dice_equals_mmseg_dice_without_ignored_pixels():
    from mmseg.models.losses import DiceLoss

    from segkit.train.losses import MaskedDiceLoss

    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, C, 8, 8, generator=gen)
    label = torch.randint(0, C, (2, 8, 8), generator=gen)
    for options in ({}, {"use_sigmoid": False}, {"naive_dice": True}):
        ours = MaskedDiceLoss(**options)(logits, label)
        theirs = DiceLoss(**options)(logits, label)
        assert torch.allclose(ours, theirs, atol=1e-6), options
