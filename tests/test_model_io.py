"""A run's model out of segkit: `segkit export` (TorchScript, ONNX) checked against the run, and
`segkit predict RUN --images DIR` / 05_predict's `images_dir` on a folder without annotations."""

import json
import os

import cv2
import numpy as np
import pytest
import torch

from segkit.coco.files import load_coco
from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import outputs_dir
from segkit.flow.cli import main
from segkit.predict.export import PROB_TOLERANCE, export_run, onnx_available
from segkit.predict.inference import load_model, predict_probs
from segkit.results.predictions import PredictionFolder
from segkit.submission.files import validate_submission
from segkit.submission.reader import read_submission
from tests.conftest import notebook_text, run_notebook


def _normalised(image, info):
    """An RGB image normalised as the export's JSON says, (1, 3, H, W) float32."""
    mean = np.array(info["input"]["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.array(info["input"]["std"], np.float32).reshape(1, 3, 1, 1)
    return ((image.astype(np.float32).transpose(2, 0, 1)[None] - mean) / std).astype(np.float32)


def _check_export(trained_run, sample_root, fmt, out, run_file):
    exported = export_run(trained_run.work_dir, fmt, out=out)
    assert exported.path == out and out.exists()
    assert exported.info_path == out.with_name(out.name + ".json")
    info = json.loads(exported.info_path.read_text())
    h, w = info["input"]["size"]
    assert info["input"]["shape"] == [1, 3, h, w] and (h, w) == (96, 96)  # the validation scale
    assert info["input"]["channel_order"] == "RGB" and len(info["input"]["mean"]) == 3
    assert info["classes"][0] == "Background" and len(info["classes"]) == 11
    assert info["output"]["shape"] == [1, 11, h, w]
    assert info["check"]["images"] >= 1 and "val.json" in info["check"]["source"]
    assert info["check"]["max_abs_prob_diff"] <= PROB_TOLERANCE == 1e-5
    assert info["checkpoint"] == str(trained_run.best_checkpoint)
    # a caller with only the file and its JSON gets segkit's own probabilities
    val = load_coco(sample_root / "val.json")
    image = cv2.cvtColor(cv2.imread(str(sample_root / val.images[0]["file_name"])),
                         cv2.COLOR_BGR2RGB)
    assert image.shape[:2] == (h, w)
    logits = run_file(exported.path, _normalised(image, info))
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    model = load_model(trained_run.work_dir)
    expected = predict_probs(model, [image], out_size=None)
    assert np.abs(probs - expected).max() <= 1e-5
    return exported


def test_torchscript_export_equals_the_run(trained_run, sample_root, tmp_path):
    def run_file(path, x):
        loaded = torch.jit.load(str(path)).eval()
        with torch.no_grad():
            return loaded(torch.from_numpy(x)).numpy()

    exported = _check_export(trained_run, sample_root, "torchscript", tmp_path / "m.pt",
                             run_file)
    assert exported.check["max_abs_output_diff"] <= 1e-5


@pytest.mark.skipif(not onnx_available(), reason="the export extra (onnx, onnxruntime, "
                                                 "onnxscript) is not installed")
def test_onnx_export_equals_the_run(trained_run, sample_root, tmp_path):
    import onnxruntime

    def run_file(path, x):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": x})[0]

    exported = _check_export(trained_run, sample_root, "onnx", tmp_path / "m.onnx", run_file)
    assert exported.check["max_abs_output_diff"] <= 1e-4


def test_export_cli_and_its_refusals(trained_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli" / "model.pt"
    assert main(["export", str(trained_run.work_dir), "--format", "torchscript",
                 "--out", str(out), "--size", "64", "80", "--check-images", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "tolerance 1e-05" in printed
    assert json.loads((tmp_path / "cli" / "model.pt.json").read_text())["input"]["size"] == \
        [64, 80]
    default = main(["export", str(trained_run.work_dir), "--format", "torchscript",
                    "--checkpoint", "last", "--check-images", "1"])
    assert default == 0
    assert (outputs_dir() / "exports" / trained_run.work_dir.name /
            f"{trained_run.last_checkpoint.stem}.pt").exists()
    assert main(["export", str(trained_run.work_dir), "--format", "torchscript",
                 "--out", str(tmp_path / "model.onnx")]) == 2
    assert "a torchscript file ends in .pt" in capsys.readouterr().err
    import segkit.predict.export as export

    monkeypatch.setattr(export, "onnx_available", lambda: False)
    assert main(["export", str(trained_run.work_dir), "--format", "onnx"]) == 2
    assert "pip install 'segkit[export]'" in capsys.readouterr().err


def test_an_export_that_differs_is_not_written(trained_run, tmp_path, monkeypatch):
    import segkit.predict.export as export

    real = export._runner

    def shifted(fmt, path):  # the exported file's logits, shifted per class
        exported = real(fmt, path)
        return lambda x: exported(x) + np.linspace(0, 3, 11, dtype=np.float32).reshape(
            1, 11, 1, 1)

    monkeypatch.setattr(export, "_runner", shifted)
    with pytest.raises(SegkitError, match=r"differs from the run's model: max \|probability "
                                          r"difference\| .* > 1e-05 .*nothing written"):
        export_run(trained_run.work_dir, "torchscript", out=tmp_path / "bad.pt",
                   check_images=1)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ParameterError, match="format='tflite'; allowed: onnx, torchscript"):
        export_run(trained_run.work_dir, "tflite")


# ---------------------------------------------------------------------------------------------
# A folder of images without annotations
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def photos(sample_root, tmp_path):
    """A user's folder: JPEGs and PNGs of other sizes (RGBA, grey, upper-case suffix, in a
    subfolder), and files that are not images or are hidden."""
    folder = tmp_path / "photos"
    (folder / "day 2").mkdir(parents=True)
    test = load_coco(sample_root / "test.json")
    first = cv2.imread(str(sample_root / test.images[0]["file_name"]))
    cv2.imwrite(str(folder / "b.jpg"), first)
    cv2.imwrite(str(folder / "a.PNG"), cv2.cvtColor(cv2.resize(first, (120, 80)),
                                                    cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(folder / "day 2" / "c.png"), cv2.cvtColor(first, cv2.COLOR_BGR2GRAY))
    (folder / "notes.txt").write_text("not an image")
    cv2.imwrite(str(folder / ".hidden.jpg"), first)
    return folder


def _listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size)
                  for p in folder.rglob("*"))


def test_predict_cli_on_a_folder_of_images(trained_run, photos, capsys):
    before = _listing(photos)
    assert main(["predict", str(trained_run.work_dir), "--images", str(photos),
                 "--submission", "--flips", "--name", "folder_run"]) == 0
    assert "3 images of" in capsys.readouterr().out
    assert _listing(photos) == before  # the user's folder is only read
    folder = PredictionFolder(outputs_dir() / "predictions" / "folder_run" / "images_photos")
    meta = folder.meta
    assert [i["file_name"] for i in meta["images"]] == ["a.PNG", "b.jpg", "day 2/c.png"]
    assert [(i["width"], i["height"]) for i in meta["images"]] == [(120, 80), (96, 96),
                                                                   (96, 96)]
    assert meta["split"] == "images" and meta["flips"] == []
    listed = load_coco(meta["source"])
    assert listed.annotations == [] and outputs_dir() in listed.path.parents
    for image in meta["images"]:
        label = folder.label(image["id"])
        assert label.shape == (image["height"], image["width"]) and label.max() < 11
        assert folder.probs(image["id"]).shape == (11, 256, 256)
    assert validate_submission(folder.submission, listed.path, 11, (256, 256)) == []
    names, maps = read_submission(folder.submission, 11, (256, 256))
    assert names == ["a.PNG", "b.jpg", "day 2/c.png"] and maps.shape == (3, 256 * 256)
    # the same image as a test image gets the same labels
    model = load_model(trained_run.work_dir)
    b = cv2.cvtColor(cv2.imread(str(photos / "b.jpg")), cv2.COLOR_BGR2RGB)
    expected = predict_probs(model, [b], out_size=None)[0].argmax(0)
    assert (folder.label(2) == expected).all()


def test_a_folder_without_images_is_refused(trained_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    assert main(["predict", str(trained_run.work_dir), "--images",
                 str(tmp_path / "empty")]) == 2
    assert "no .jpg, .jpeg, .png files in it" in capsys.readouterr().err
    assert main(["predict", str(trained_run.work_dir), "--images",
                 str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_05_predict_a_folder_of_images(trained_run, photos, tmp_path):
    nb = run_notebook("05_predict", tmp_path, run_dir=str(trained_run.work_dir), splits=[],
                      images_dir=str(photos), images_submission=True, name="nb_folder")
    text = notebook_text(nb)
    folder = outputs_dir() / "predictions" / "nb_folder" / "images_photos"
    assert f"3 images of {photos}" in text and str(folder / "submission.csv") in text
    assert (folder / "submission.csv").exists() and len(list((folder / "labels").iterdir())) == 3
    assert not (outputs_dir() / "predictions" / "nb_folder" / "val").exists()  # splits=[]
