"""A run remembers its data: data.json records the train / val files (path and sha256) and the
split they came from; whatever asks a run for its validation file gets that file or one line
saying it changed. Runs without data.json resolve their files from params.json, as before."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from segkit.core.errors import SegkitError
from segkit.flow.cli import main
from segkit.folds.split import split_file
from segkit.results.run_data import DATA_FILE
from segkit.results.runs import Run
from tests.conftest import TINY_TRAIN

TRAIN = {**TINY_TRAIN, "warmup_iters": 1}


@pytest.fixture(scope="module")
def fold_run(sample_root, tmp_path_factory):
    """(outputs folder, run): fold 0 of a 3-fold split (seed 42) in outputs/splits, trained
    with splits_dir='' as 04_train's defaults do (2 iterations)."""
    from segkit.train.training import run

    outputs = tmp_path_factory.mktemp("run_data") / "outputs"
    before = os.environ.get("SEGKIT_OUTPUTS")
    os.environ["SEGKIT_OUTPUTS"] = str(outputs)
    try:
        split_file(sample_root / "train_all.json", outputs / "splits", n_splits=3, seed=42)
        result = run(data_root=str(sample_root), fold=0, splits_dir="", iters=2, val_interval=2,
                     weights="none", run_name="lite0_fold0", **TRAIN)
    finally:
        if before is None:
            os.environ.pop("SEGKIT_OUTPUTS", None)
        else:
            os.environ["SEGKIT_OUTPUTS"] = before
    return outputs, Run(result.work_dir)


@pytest.fixture
def outputs(fold_run, sample_root, monkeypatch):
    """The fold run's outputs folder, its split put back to seed 42 (tests re-split it)."""
    folder, _ = fold_run
    monkeypatch.setenv("SEGKIT_OUTPUTS", str(folder))
    split_file(sample_root / "train_all.json", folder / "splits", n_splits=3, seed=42)
    return folder


def _resplit(sample_root, outputs: Path, seed: int) -> None:
    split_file(sample_root / "train_all.json", outputs / "splits", n_splits=3, seed=seed)


def test_the_run_records_its_files_and_split(fold_run, outputs, sample_root):
    _, run = fold_run
    recorded = json.loads((run.path / DATA_FILE).read_text())
    splits = (outputs / "splits").resolve()
    assert recorded["train"]["path"] == str(splits / "fold0_train.json")
    assert recorded["val"]["path"] == str(splits / "fold0_val.json")
    assert len(recorded["val"]["sha256"]) == 64 and recorded["extra_train"] == []
    assert recorded["data_root"] == str(sample_root.resolve())
    split = recorded["split"]
    assert (split["folder"], split["fold"], split["seed"], split["n_splits"], split["by"],
            split["images"]) == (str(splits), 0, 42, 3, "annotations", 24)
    assert split["source"] == str((sample_root / "train_all.json").resolve())
    assert run.data() == (sample_root.resolve(), splits / "fold0_val.json")


def test_a_resplit_with_another_seed_is_refused_in_one_line(fold_run, outputs, sample_root,
                                                            capsys):
    """The reproduced bug: fold=0, splits_dir=''; after a re-split with seed 7 `segkit predict
    RUN --splits val` scored the run on images it trained on. Now it refuses, names the run,
    the file and the split command that brings its folds back; back at seed 42 it scores."""
    _, run = fold_run
    _resplit(sample_root, outputs, seed=7)
    assert main(["predict", str(run.path), "--splits", "val"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(run.path) in err and "fold0_val.json changed since the run was trained" in err
    assert f"segkit split {(sample_root / 'train_all.json').resolve()} --n-splits 3 --seed 42" \
        in err
    assert not (outputs / "predictions" / run.name / "val").exists()
    for call in (run.data, run.fold_files, run.check_data):
        with pytest.raises(SegkitError, match="changed since the run was trained"):
            call()

    _resplit(sample_root, outputs, seed=42)
    assert main(["predict", str(run.path), "--splits", "val"]) == 0
    assert "validation mIoU" in capsys.readouterr().out


def test_everything_that_asks_for_the_validation_file_refuses(fold_run, outputs, sample_root):
    """07's members, 08's error analysis (val_predictions), round 2 of pseudo labels, resuming
    the training, `segkit oof`: one SegkitError each; test predictions need no validation."""
    from segkit.flow.round2 import round2_parameters
    from segkit.predict.members import ensemble_inputs
    from segkit.predict.writing import predict_run, val_predictions
    from segkit.train.training import run as train

    _, run = fold_run
    _resplit(sample_root, outputs, seed=7)
    for call in (lambda: ensemble_inputs([run], sample_root / "test.json", sample_root),
                 lambda: val_predictions(run),
                 lambda: round2_parameters(run, [], "lite0_fold0_pseudo")):
        with pytest.raises(SegkitError, match="fold0_val.json changed since"):
            call()
    assert main(["oof", str(run.path), "--partial"]) == 2
    recorded = (run.path / DATA_FILE).read_text()
    with pytest.raises(SegkitError, match="cannot resume: .*fold0_.*changed"):
        train(data_root=str(sample_root), fold=0, splits_dir="", iters=4, val_interval=2,
              weights="none", run_name="lite0_fold0", resume=True, **TRAIN)
    assert (run.path / DATA_FILE).read_text() == recorded
    assert predict_run(run, "test").missing_files() == []


def test_a_changed_extra_source_refuses_resume_only(tmp_path):
    """Extra train sources (copy-paste, pseudo labels) are recorded; a changed one stops a
    resume, not predictions (they do not change what the run was validated on)."""
    train, val, extra = (tmp_path / f"{n}.json" for n in ("train", "val", "extra"))
    for f in (train, val, extra):
        f.write_text(json.dumps({"images": [], "name": f.stem}))
    from segkit.results.run_data import data_record

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({"train_file": str(train),
                                                    "val_file": str(val)}))
    run = Run(folder)
    record = data_record(tmp_path, train, val, [(extra, tmp_path)])
    run.record_data(record)
    extra.write_text("{}")
    assert run.data()[1] == val.resolve()
    with pytest.raises(SegkitError, match="extra training file .*extra.json changed"):
        run.check_data()
    with pytest.raises(SegkitError, match="cannot resume: .*extra.json changed"):
        run.record_data(data_record(tmp_path, train, val, [(extra, tmp_path)]), continuing=True)
    val.unlink()
    with pytest.raises(SegkitError, match="validation file .*val.json .* is gone; restore"):
        run.data()


def test_a_moved_run_finds_its_files_by_content(fold_run, outputs, tmp_path, monkeypatch):
    """data.json's paths are where the files were; a run folder and outputs moved elsewhere
    find the same files through params.json (splits_dir '' = outputs/splits), checked by
    content."""
    _, run = fold_run
    moved = tmp_path / "elsewhere"
    shutil.copytree(outputs / "splits", moved / "splits")
    shutil.copytree(run.path, moved / "runs" / run.name)
    recorded = json.loads((run.path / DATA_FILE).read_text())
    for key in ("train", "val"):
        recorded[key]["path"] = "/gone/" + Path(recorded[key]["path"]).name
    (moved / "runs" / run.name / DATA_FILE).write_text(json.dumps(recorded))
    monkeypatch.setenv("SEGKIT_OUTPUTS", str(moved))
    assert Run(moved / "runs" / run.name).data()[1] == moved / "splits" / "fold0_val.json"


def test_a_run_without_data_json_resolves_as_before(fold_run, outputs, sample_root, capsys):
    """Runs trained before data.json: params.json's fold and splits_dir, whatever the folds
    hold now (here a re-split with seed 7: what it always did)."""
    _, run = fold_run
    legacy = outputs / "runs" / "legacy_fold0"
    shutil.rmtree(legacy, ignore_errors=True)
    shutil.copytree(run.path, legacy, ignore=shutil.ignore_patterns(DATA_FILE))
    _resplit(sample_root, outputs, seed=7)
    assert Run(legacy).recorded_data() is None
    assert Run(legacy).data()[1] == outputs / "splits" / "fold0_val.json"
    assert main(["predict", str(legacy), "--splits", "val"]) == 0
    assert "validation mIoU" in capsys.readouterr().out


def test_oof_refuses_folds_that_do_not_cover_the_split(fold_run, outputs, sample_root, capsys):
    """1 of 3 folds: refused, unless --partial (partial=True), which says N of M images in what
    it prints and in score.json; all three folds: 24 of 24."""
    from segkit.predict.cv import out_of_fold
    from segkit.predict.options import PredictOptions

    _, run = fold_run
    assert main(["oof", str(run.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "1 of 3 folds" in err and "of 24 images" in err and "--partial" in err
    assert "no run of fold 1, 2" in err

    assert main(["oof", str(run.path), "--partial", "--flips"]) == 0
    out = capsys.readouterr().out
    images = len(json.loads((outputs / "splits" / "fold0_val.json").read_text())["images"])
    assert f"1 of 3 folds, {images} of 24 images out of fold (partial" in out
    score = json.loads((outputs / "oof" / "lite0_oof" / "score.json").read_text())
    assert score["coverage"] == f"{images} of 24 images" and score["partial"] is True
    assert score["images"] == images and score["split images"] == 24

    # the other folds: the same weights, as runs without data.json (params.json's fold)
    runs = [run]
    for k in (1, 2):
        other = outputs / "runs" / f"lite0_fold{k}"
        shutil.rmtree(other, ignore_errors=True)
        shutil.copytree(run.path, other, ignore=shutil.ignore_patterns(DATA_FILE))
        params = json.loads((other / "params.json").read_text())
        (other / "params.json").write_text(json.dumps({**params, "fold": k}))
        runs.append(Run(other))
    whole = out_of_fold(runs, PredictOptions())
    assert whole.coverage == "24 of 24 images" and not whole.partial
    assert "3 of 3 folds, 24 of 24 images out of fold (" in whole.report()
