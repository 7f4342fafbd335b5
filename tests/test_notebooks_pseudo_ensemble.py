"""06_pseudo_label and 07_ensemble executed by papermill on tiny data, and the ensemble helpers
they call."""

import json
import os

import numpy as np
import pytest

from segkit.coco.files import load_coco, read_label
from segkit.core.classes import TRASH
from segkit.core.errors import ParameterError, SegkitError
from segkit.core.metrics import confusion_matrix, miou
from segkit.core.paths import outputs_dir
from segkit.predict import ensemble
from segkit.predict.options import PredictOptions
from segkit.predict.writing import predict_run
from segkit.results.predictions import save_probs, write_prediction_meta
from segkit.results.run_lists import common_validation, find_runs
from segkit.results.runs import Run
from segkit.submission.files import validate_submission
from segkit.submission.reader import read_submission
from segkit.submission.vote import hard_vote, weighted_vote
from tests.conftest import notebook_text, run_notebook, tiny_train_params

C = len(TRASH)


@pytest.fixture(scope="module")
def second_run(trained_run, sample_root, tmp_path_factory):
    """A second model: the trained run fine-tuned briefly with another seed."""
    from segkit.train.training import run

    return run(**tiny_train_params(sample_root, iters=10, val_interval=10, seed=7, lr=0.004,
                                   weights="none", load_from=str(trained_run.best_checkpoint),
                                   work_dir=str(tmp_path_factory.mktemp("runs") / "lite0_b")))


def test_06_pseudo_label_notebook(trained_run, sample_root, tmp_path):
    nb = run_notebook("06_pseudo_label", tmp_path, data_root=str(sample_root),
                      run_dirs=[str(trained_run.work_dir)], threshold=0.7, name="nb_pseudo",
                      round2_name="nb_round2", round2_iters=10, round2_val_interval=10,
                      num_workers=0, n_examples=2)
    text = notebook_text(nb)
    out = outputs_dir() / "pseudo" / "nb_pseudo"
    test = load_coco(sample_root / "test.json")
    data = json.loads((out / "pseudo.json").read_text())
    assert [img["id"] for img in data["images"]] == [img["id"] for img in test.images]
    labels = [read_label(out / img["seg_map"]) for img in data["images"]]
    assert all(lab.shape == (96, 96) for lab in labels)
    values = np.unique(np.concatenate([lab.ravel() for lab in labels]))
    assert 255 in values and len(values) > 1  # some pixels kept, some ignored
    assert (out / "examples.png").exists() and (out / "round_comparison.png").exists()
    assert (out / "report.csv").read_text().startswith("class,predicted_pixels,kept_pixels")
    assert f"{len(test.images)} images -> {out / 'pseudo.json'}" in text
    # round 2 went through 04_train with the pseudo labels and round 1's settings
    round2 = outputs_dir() / "runs" / "nb_round2"
    params = json.loads((round2 / "params.json").read_text())
    assert params["extra_train_files"] == [str(out / "pseudo.json")]
    assert params["load_from"] == str(trained_run.best_checkpoint)
    assert params["iters"] == 10 and params["crop_size"] == 64
    assert (round2 / "04_train.ipynb").exists() and (round2 / "iter_10.pth").exists()
    # the comparison of both rounds is the last output
    html = nb.cells[-1].outputs[0]["data"]["text/html"]
    assert "round 2 - round 1" in html and "mIoU" in html and "Clothing" in html


def test_07_ensemble_notebook(trained_run, second_run, sample_root, tmp_path):
    runs = [str(trained_run.work_dir), str(second_run.work_dir)]
    nb = run_notebook("07_ensemble", tmp_path, data_root=str(sample_root), run_dirs=runs,
                      method="greedy", name="nb_ens", n_examples=2)
    text = notebook_text(nb)
    csv = outputs_dir() / "ensembles" / "nb_ens.csv"
    assert validate_submission(csv, sample_root / "test.json", C, (256, 256)) == []
    assert "valid for test.json" in text and "greedy weights" in text
    assert (outputs_dir() / "ensembles" / "nb_ens_disagreement.png").exists()
    table_html = [o["data"]["text/html"] for c in nb.cells for o in c.get("outputs", [])
                  if "data" in o and "text/html" in o["data"] and "hard vote" in
                  o["data"]["text/html"]]
    assert table_html and "lite0_b" in table_html[0] and "soft vote" in table_html[0]
    # the CSV is the soft vote of the test folders with the greedy weights
    test_dirs = [outputs_dir() / "predictions" / name / "test" for name in ("lite0", "lite0_b")]
    val_dirs = [outputs_dir() / "predictions" / name / "val" for name in ("lite0", "lite0_b")]
    val = load_coco(sample_root / "val.json")
    truth = ensemble.truth_at_size(val, TRASH, (256, 256))
    weights = ensemble.greedy_selection(val_dirs, truth).weights
    expected = ensemble.write_ensemble_submission(test_dirs, tmp_path / "expected.csv", "soft",
                                                  weights)
    assert csv.read_bytes() == expected.read_bytes()
    # every member predicted with 05_predict's default TTA, so 05's folders are reused
    assert all(json.loads((d / "meta.json").read_text())["flips"] == ["h"] for d in val_dirs)


def test_07_single_run_and_bad_method(trained_run, sample_root, tmp_path):
    from segkit.flow.notebook import NotebookError

    with pytest.raises(NotebookError, match="method='vote'; allowed: soft, hard, greedy"):
        run_notebook("07_ensemble", tmp_path, data_root=str(sample_root), method="vote",
                     run_dirs=[str(trained_run.work_dir)])
    nb = run_notebook("07_ensemble", tmp_path, data_root=str(sample_root), method="hard",
                      run_dirs=[str(trained_run.work_dir)], name="single")
    text = notebook_text(nb)
    assert "every ensemble equals the model itself" in text
    assert "nothing to disagree about" in text
    single = outputs_dir() / "ensembles" / "single.csv"
    own = outputs_dir() / "predictions" / "lite0" / "test" / "submission.csv"
    assert single.read_bytes() == own.read_bytes()


# ---------------------------------------------------------------------------------------------
# The helpers, on hand-made prediction folders
# ---------------------------------------------------------------------------------------------

def _folder(path, labels: dict, confidence: int = 200):
    """A prediction folder whose argmax is `labels` (id -> (H, W) class map)."""
    images = []
    for image_id, label in labels.items():
        h, w = label.shape
        q = np.full((C, h, w), (255 - confidence) // (C - 1), np.uint8)
        np.put_along_axis(q, label[None].astype(np.int64), confidence, 0)
        save_probs(path, image_id, q)
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": w, "height": h})
    write_prediction_meta(path, images, TRASH.names, (h, w), "val")
    return path


def test_score_ensembles_against_direct_computation(tmp_path):
    rng = np.random.default_rng(0)
    truth = {i: rng.integers(0, 4, (8, 8)).astype(np.uint8) for i in (1, 2)}
    models = [{i: np.where(rng.random((8, 8)) < 0.6, t, rng.integers(0, 4, (8, 8))
                           ).astype(np.uint8) for i, t in truth.items()} for _ in range(3)]
    truth[2][0] = 255  # not scored
    dirs = [_folder(tmp_path / f"m{k}", labels, confidence=200 - 20 * k)
            for k, labels in enumerate(models)]
    scores = ensemble.score_ensembles(dirs, truth, ["a", "b", "c"],
                                      soft={"soft": None, "only c": [0, 0, 1]},
                                      hard={"hard": [1, 1, 3]})
    table = scores.table
    assert list(table.columns) == ["a", "b", "c", "soft", "only c", "hard"]
    assert list(table.index) == list(TRASH.names) + ["mIoU"]
    for name, labels in zip("abc", models):
        cm = sum(confusion_matrix(labels[i], truth[i], C) for i in truth)
        assert table.loc["mIoU", name] == pytest.approx(miou(cm))
    assert table["only c"].equals(table["c"])
    hard_cm = sum(confusion_matrix(weighted_vote(np.stack([m[i] for m in models]),
                                                          [1, 1, 3], C), truth[i], C)
                  for i in truth)
    assert table.loc["mIoU", "hard"] == pytest.approx(miou(hard_cm))
    # weights [1, 1, 3]: c outvotes a and b together, so the hard vote is c
    assert table.loc["mIoU", "hard"] == pytest.approx(table.loc["mIoU", "c"])
    per_image = scores.per_image
    for _, row in per_image.iterrows():
        stack = np.stack([m[row["image_id"]] for m in models])
        assert row["disagreement"] == pytest.approx((stack != stack[0]).any(0).mean())
    assert per_image["disagreement"].is_monotonic_decreasing
    with pytest.raises(ParameterError, match="distinct"):
        ensemble.score_ensembles(dirs, truth, ["a", "b", "c"], soft={"a": None})
    single = ensemble.score_ensembles(dirs[:1], truth, ["a"], soft={"s": None}, hard={"h": None})
    assert single.table["s"].equals(single.table["a"]) and single.table["h"].equals(
        single.table["a"])
    assert (single.per_image["disagreement"] == 0).all()


def test_write_ensemble_submission_methods(tmp_path):
    rng = np.random.default_rng(1)
    dirs = []
    for k in range(3):
        labels = {i: rng.integers(0, C, (4, 4)).astype(np.uint8) for i in (5, 6)}
        d = _folder(tmp_path / f"t{k}", labels)
        from segkit.submission.files import write_submission

        write_submission(d / "submission.csv", [f"{i}.jpg" for i in labels],
                         list(labels.values()), C, (4, 4))
        dirs.append(d)
    hard = ensemble.write_ensemble_submission(dirs, tmp_path / "hard.csv", "hard", [1, 2, 1])
    direct = hard_vote([d / "submission.csv" for d in dirs], tmp_path / "direct.csv",
                                [1, 2, 1], C, (4, 4))
    assert hard.read_bytes() == direct.read_bytes()
    # a zero weight drops a model; one model left is that model's own prediction
    one = ensemble.write_ensemble_submission(dirs, tmp_path / "one.csv", "hard", [0, 1, 0])
    assert one.read_bytes() == (dirs[1] / "submission.csv").read_bytes()
    soft_one = ensemble.write_ensemble_submission(dirs[2:], tmp_path / "soft1.csv", "soft")
    assert soft_one.read_bytes() == (dirs[2] / "submission.csv").read_bytes()
    soft = ensemble.write_ensemble_submission(dirs, tmp_path / "soft.csv", "greedy", [2, 0, 1])
    names, maps = read_submission(soft, C, (4, 4))
    assert names == ["5.jpg", "6.jpg"] and maps.shape == (2, 16)
    with pytest.raises(ParameterError, match="method='mean'; allowed: soft, hard, greedy"):
        ensemble.write_ensemble_submission(dirs, tmp_path / "bad.csv", "mean")
    (dirs[0] / "submission.csv").unlink()
    with pytest.raises(SegkitError, match="no submission CSV"):
        ensemble.write_ensemble_submission(dirs, tmp_path / "bad.csv", "hard")
    assert not (tmp_path / "bad.csv").exists()


def test_runs_of_a_fold_and_their_common_validation(trained_run, second_run, sample_root,
                                                    tmp_path):
    root, val = common_validation([trained_run.work_dir, second_run.work_dir])
    assert root == sample_root and val == sample_root / "val.json"
    other = tmp_path / "other_run"
    other.mkdir()
    params = json.loads((trained_run.work_dir / "params.json").read_text())
    (other / "params.json").write_text(json.dumps({**params,
                                                   "val_file": str(sample_root / "train.json")}))
    with pytest.raises(SegkitError, match=f"{other}: validated on .*train.json"):
        common_validation([trained_run.work_dir, other])
    # find_runs: only runs with a checkpoint validated on the fold's val file
    from segkit.folds.split import split_file

    splits = outputs_dir() / "splits"
    if not (splits / "fold0_val.json").exists():
        split_file(sample_root / "train_all.json")
    runs = tmp_path / "runs"
    for name, val_file in (("on_fold", splits / "fold0_val.json"),
                           ("other_fold", splits / "fold1_val.json")):
        (runs / name).mkdir(parents=True)
        (runs / name / "params.json").write_text(json.dumps({**params, "val_file": str(val_file)}))
        (runs / name / "iter_1.pth").write_bytes(b"")
    (runs / "no_checkpoint").mkdir()
    (runs / "no_checkpoint" / "params.json").write_text(
        json.dumps({**params, "val_file": str(splits / "fold0_val.json")}))
    assert find_runs(runs, fold=0) == [Run(runs / "on_fold")]
    assert find_runs(runs, fold=1) == [Run(runs / "other_fold")]
    assert [r.name for r in find_runs(runs)] == ["on_fold", "other_fold"]


def test_predict_run_reuses_a_folder_made_the_same_way_only(trained_run, sample_root, tmp_path,
                                                           monkeypatch):
    val_json = sample_root / "val.json"
    out = predict_run(trained_run.work_dir, "val", coco_file=val_json, data_root=sample_root,
                      out_dir=tmp_path / "val").path
    meta = out / "meta.json"
    stamp = meta.stat().st_mtime_ns
    again = predict_run(trained_run.work_dir, "val", coco_file=val_json,
                        data_root=sample_root, out_dir=tmp_path / "val")
    assert again.path == out and meta.stat().st_mtime_ns == stamp
    # the same run and file named by relative paths (as 05_predict may record them): reused
    monkeypatch.chdir(tmp_path)
    predict_run(os.path.relpath(trained_run.work_dir), "val",
                coco_file=os.path.relpath(val_json), data_root=sample_root, out_dir="val")
    assert meta.stat().st_mtime_ns == stamp
    # predicted from relative names, the folder records where they are from any folder
    fresh = predict_run(os.path.relpath(trained_run.work_dir), "val",
                        coco_file="../" + os.path.relpath(val_json, tmp_path.parent),
                        data_root=sample_root, out_dir="fresh").path
    recorded = json.loads((fresh / "meta.json").read_text())
    assert recorded["checkpoint"] == str(trained_run.best_checkpoint.resolve())
    assert recorded["source"] == str(val_json.resolve())
    # any option that changes the output: predicted again, and recorded
    for option, value, key, expected in (
            ("flips", ("h",), "flips", ["h"]),
            ("scales", (0.75, 1.0), "scales", [0.75, 1.0]),
            ("slide", (64, 32), "slide", [64, 32]),
            ("out_size", (48, 48), "size", [48, 48]),
            ("reduction", "nearest", "reduction", "nearest"),
            ("checkpoint", "last", "checkpoint", str(trained_run.last_checkpoint.resolve()))):
        stamp = meta.stat().st_mtime_ns
        predict_run(trained_run.work_dir, "val", PredictOptions(**{option: value}),
                    coco_file=val_json, data_root=sample_root, out_dir=tmp_path / "val")
        assert meta.stat().st_mtime_ns != stamp, option
        assert json.loads(meta.read_text())[key] == expected, option
    # another source file with the same images: predicted again
    stamp = meta.stat().st_mtime_ns
    copy = tmp_path / "val_copy.json"
    copy.write_bytes(val_json.read_bytes())
    predict_run(trained_run.work_dir, "val",
                PredictOptions(checkpoint="last", reduction="nearest"), coco_file=copy,
                data_root=sample_root, out_dir=tmp_path / "val")
    assert json.loads(meta.read_text())["source"] == str(copy.resolve())
