"""Inference from a real (tiny) training run: TTA, sliding windows, folders, evaluation."""

import json
import shutil

import numpy as np
import pytest

from segkit.coco.files import load_coco, read_image, write_coco
from segkit.core.classes import TRASH
from segkit.core.errors import SegkitError
from segkit.predict.inference import check_model_classes, load_model, predict_probs, reduce_label
from segkit.predict.options import PredictOptions
from segkit.predict.writing import predict_dataset
from segkit.results.predictions import (
    dequantize_probs,
    evaluate,
    quantize_probs,
    read_prediction_meta,
)
from segkit.results.runs import Run
from segkit.submission.files import validate_submission
from segkit.submission.reader import read_submission


@pytest.fixture(scope="module")
def model(trained_run):
    return load_model(trained_run.work_dir, "best")


def test_checkpoint_predicts_what_validation_measured(trained_run, model, sample_root, tmp_path):
    root, val_file = Run.open(trained_run.work_dir).data()
    assert root == sample_root and val_file == sample_root / "val.json"
    coco = load_coco(val_file)
    out = predict_dataset(model, coco, root, tmp_path / "val", split="val",
                          save_full_labels=True, progress=False)
    result = evaluate(out, coco)
    # same checkpoint, same images at the same size: the logged best mIoU comes back
    assert result.miou == pytest.approx(trained_run.best_miou, abs=1e-3)
    assert list(result.per_class.index) == list(TRASH.names)
    assert result.per_image["mIoU"].is_monotonic_increasing
    assert len(result.per_image) == len(coco.images)


def test_flip_tta_averages_flipped_passes(model, sample_root):
    coco = load_coco(sample_root / "val.json")
    image = read_image(sample_root, coco.images[0])
    plain = predict_probs(model, [image], out_size=None)
    flipped = predict_probs(model, [image[:, ::-1].copy()], out_size=None)[..., ::-1]
    tta = predict_probs(model, [image], out_size=None, flips=("h",))
    assert np.allclose(tta, (plain + flipped) / 2, atol=1e-5)
    assert np.allclose(tta.sum(1), 1, atol=1e-4)


def test_scales_slide_and_out_size(model, sample_root):
    coco = load_coco(sample_root / "val.json")
    image = read_image(sample_root, coco.images[0])
    probs = predict_probs(model, [image], out_size=(48, 48), scales=(0.75, 1.0),
                          flips=("h", "v"), slide=(64, 32))
    assert probs.shape == (1, 11, 48, 48)
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    big = predict_probs(model, [image], out_size=(256, 256))
    assert big.shape == (1, 11, 256, 256)


def test_test_split_writes_a_valid_submission(model, sample_root, tmp_path):
    coco = load_coco(sample_root / "test.json")
    out = predict_dataset(model, coco, sample_root, tmp_path / "test",
                          PredictOptions(flips=("h",)), split="test", progress=False)
    assert validate_submission(out / "submission.csv", sample_root / "test.json") == []
    names, labels = read_submission(out / "submission.csv")
    assert names == [img["file_name"] for img in coco.images]
    meta = read_prediction_meta(out)
    assert meta["split"] == "test" and meta["flips"] == ["h"] and len(meta["images"]) == 6
    stored = np.load(out / "probs" / f"{coco.images[0]['id']}.npy")
    assert stored.dtype == np.uint8 and stored.shape == (11, 256, 256)
    assert (stored.argmax(0).ravel() == labels[0]).mean() > 0.99


def test_reductions():
    label = np.array([[0, 0, 3, 1], [0, 2, 0, 0]], np.uint8)
    assert reduce_label(label, (1, 2), "max2x2").tolist() == [[2, 3]]
    assert reduce_label(np.kron(label, np.ones((2, 2), np.uint8)), (2, 4)).tolist() == \
        label.tolist()
    with pytest.raises(SegkitError, match="allowed: nearest, max2x2"):
        reduce_label(label, (1, 2), "mode")


def test_nearest_reduction_of_full_size_labels(model, sample_root, tmp_path):
    coco = load_coco(sample_root / "test.json")
    out = predict_dataset(model, coco, sample_root, tmp_path / "n",
                          PredictOptions(reduction="nearest", out_size=(48, 48)), split="test",
                          progress=False)
    _, labels = read_submission(out / "submission.csv", size=(48, 48))
    assert labels.shape == (6, 48 * 48)


def test_quantisation_roundtrip():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(11), size=(4, 4)).transpose(2, 0, 1)
    assert np.abs(dequantize_probs(quantize_probs(p)) - p).max() <= 0.5 / 255 + 1e-7


def test_bad_inputs(trained_run, model, sample_root, tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    shutil.copy(trained_run.work_dir / "config.py", empty / "config.py")
    with pytest.raises(SegkitError, match="empty_run: not a run folder"):
        load_model(empty)
    (empty / "params.json").write_text("{}")
    with pytest.raises(SegkitError, match="empty_run: no checkpoint 'best'"):
        load_model(empty)
    with pytest.raises(SegkitError, match="predicts 11 classes but the data has 3"):
        check_model_classes(model, ["Background", "a", "b"])
    coco = load_coco(sample_root / "test.json")
    data = coco.to_dict()
    data["images"][2] = {**data["images"][2], "file_name": "batch_03/nope.jpg"}
    broken = load_coco(write_coco(data, tmp_path / "test.json"))
    with pytest.raises(SegkitError, match="nope.jpg: image file missing"):
        predict_dataset(model, broken, sample_root, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing written half
    assert not list(tmp_path.glob(".out.*"))
    with pytest.raises(SegkitError, match="not a run folder"):
        Run.open(tmp_path).data()


def test_meta_lists_images_in_order(model, sample_root, tmp_path):
    coco = load_coco(sample_root / "val.json")
    out = predict_dataset(model, coco, sample_root, tmp_path / "v", split="val", progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert [i["id"] for i in meta["images"]] == [i["id"] for i in coco.images]


def test_prediction_uses_the_validation_scale(model, sample_root):
    """Images are shrunk into the box the validation pipeline used, as in training."""
    import torch
    import torch.nn.functional as F

    assert model.segkit_input_scale == (96, 96)  # the tiny run's image_size
    coco = load_coco(sample_root / "val.json")
    image = read_image(sample_root, coco.images[0])
    try:
        model.segkit_input_scale = (48, 48)
        probs = predict_probs(model, [image], out_size=None)
        model.segkit_input_scale = None
        small = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(),
                              size=(48, 48), mode="bilinear", align_corners=False)
        # the same pixels shrunk by hand (normalisation commutes with the resize)
        manual = predict_probs(model, [small[0].permute(1, 2, 0).numpy()], out_size=(96, 96))
    finally:
        model.segkit_input_scale = (96, 96)
    assert probs.shape == (1, 11, 96, 96)
    assert np.allclose(probs, manual, atol=1e-4)


def test_predict_cli_scores_validation_and_writes_the_submission(trained_run, sample_root,
                                                                  capsys):
    import re

    from segkit.core.paths import outputs_dir
    from segkit.flow.cli import main

    assert main(["predict", str(trained_run.work_dir), "--flips", "--name", "cli"]) == 0
    printed = capsys.readouterr().out
    # no TTA, the best checkpoint, full size: what training's validation measured
    miou = float(re.search(r"validation mIoU (\d\.\d+)", printed).group(1))
    assert miou == pytest.approx(trained_run.best_miou, abs=1e-3)
    csv = outputs_dir() / "predictions" / "cli" / "test" / "submission.csv"
    assert f"submission: {csv}" in printed
    assert validate_submission(csv, sample_root / "test.json") == []
    meta = read_prediction_meta(outputs_dir() / "predictions" / "cli" / "val")
    assert meta["flips"] == [] and meta["split"] == "val"


def test_predict_cli_bad_run(tmp_path, capsys):
    from segkit.flow.cli import main

    assert main(["predict", str(tmp_path / "no_run"), "--splits", "test"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no_run" in err and len(err.strip().splitlines()) == 1


def test_predict_cli_writes_the_local_score_beside_the_submission(trained_run, capsys):
    from segkit.core.paths import outputs_dir
    from segkit.flow.cli import main
    from segkit.submission.leaderboard import sha256

    assert main(["predict", str(trained_run.work_dir), "--flips", "--name", "scored",
                 "--slide", "64", "32", "--reduction", "nearest"]) == 0
    folder = outputs_dir() / "predictions" / "scored"
    score = json.loads((folder / "test" / "submission.csv.score.json").read_text())
    assert score["sha256"] == sha256(folder / "test" / "submission.csv")
    assert "local score in" in capsys.readouterr().out
    meta = read_prediction_meta(folder / "test")
    assert meta["slide"] == [64, 32] and meta["reduction"] == "nearest"


def test_predict_options_are_checked_and_normalised():
    from segkit.core.errors import ParameterError

    options = PredictOptions(flips=["v", "h"], scales=[1, 0.5], slide=[64, 32],
                             out_size=[48, 48], checkpoints=["best", 400])
    assert options.flips == ("v", "h") and options.scales == (1.0, 0.5)
    assert options.slide == (64, 32) and options.out_size == (48, 48)
    assert options.members == ("best", 400)
    assert options.at(400).checkpoint == 400 and options.at(400).checkpoints == ()
    assert hash(options) == hash(PredictOptions(flips=("v", "h"), scales=(1.0, 0.5),
                                                slide=(64, 32), out_size=(48, 48),
                                                checkpoints=("best", 400)))
    for bad, message in ((dict(flips=["x"]), "flips has 'x'"),
                         (dict(flips=["h", "h"]), "names a flip twice"),
                         (dict(scales=[0]), "scales="),
                         (dict(scales=[]), "scales="),
                         (dict(slide=[64]), "slide="),
                         (dict(out_size=[0, 4]), "out_size="),
                         (dict(reduction="mean"), "reduction"),
                         (dict(checkpoints=["best", "best"]), "names a checkpoint twice"),
                         (dict(amp="yes"), "amp=")):
        with pytest.raises(ParameterError, match=message):
            PredictOptions(**bad)


def test_an_incomplete_prediction_folder_is_predicted_again(trained_run, sample_root, tmp_path):
    from segkit.predict.writing import predict_run

    out = tmp_path / "test"
    first = predict_run(trained_run.work_dir, "test", coco_file=sample_root / "test.json",
                        data_root=sample_root, out_dir=out, save_full_labels=True)
    removed = sorted((out / "probs").iterdir())[0]
    removed.unlink()
    (out / "labels" / f"{removed.stem}.png").unlink()
    assert [p.name for p in first.missing_files(labels=True)] == [removed.name,
                                                                   f"{removed.stem}.png"]
    again = predict_run(trained_run.work_dir, "test", coco_file=sample_root / "test.json",
                        data_root=sample_root, out_dir=out, save_full_labels=True)
    assert again.missing_files(labels=True) == []
    # asked with full labels where a folder has none: predicted again, labels included
    plain = tmp_path / "plain"
    predict_run(trained_run.work_dir, "test", coco_file=sample_root / "test.json",
                data_root=sample_root, out_dir=plain)
    assert not (plain / "labels").exists()
    predict_run(trained_run.work_dir, "test", coco_file=sample_root / "test.json",
                data_root=sample_root, out_dir=plain, save_full_labels=True)
    assert len(list((plain / "labels").iterdir())) == len(load_coco(sample_root / "test.json").images)
