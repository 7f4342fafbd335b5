"""Faults that used to end in a traceback, a wrong answer or a half-written file: each is now
refused (or repaired) in one line, exit code 2 from the command line (docs/bad-input.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from segkit.core.errors import CocoError, ParameterError, SegkitError
from segkit.flow.cli import main
from tests.conftest import TINY_TRAIN


def _error_line(capsys) -> str:
    """The one line the CLI printed for an error (and no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert not any("Traceback" in line for line in err), err
    return err[-1]


def _train_args(sample_root: Path, **extra) -> list[str]:
    params = {"data_root": sample_root, "train_file": sample_root / "train.json",
              "val_file": sample_root / "val.json", **TINY_TRAIN, "iters": 2, **extra}
    return ["train", *(f"{k}={v}" for k, v in params.items())]


# --- 1, 7: pipeline specs ---------------------------------------------------------------------

def test_a_pipeline_spec_that_is_a_folder_is_one_line(tmp_path, capsys):
    assert main(["pipeline", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert str(tmp_path) in line and "a folder, not a pipeline spec" in line


def test_a_placeholder_without_foreach_is_refused_before_the_first_step(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\nsteps:\n  - notebook: 02_split\n"
                    "    parameters: {output_dir: 'splits_tn{fold}'}\n")
    assert main(["pipeline", str(spec)]) == 2
    line = _error_line(capsys)
    assert "step 1 (02_split)" in line and "output_dir" in line and "{fold}" in line
    assert "foreach" in line
    from segkit.core.paths import outputs_dir

    assert not list(outputs_dir().glob("splits_tn*"))  # nothing ran

    # a foreach key that is not the placeholder's does not fill it either
    spec.write_text("name: t\nsteps:\n  - notebook: 02_split\n    foreach: {seed: [1, 2]}\n"
                    "    parameters: {output_dir: 'splits_{fold}_{seed}'}\n")
    assert main(["pipeline", str(spec)]) == 2
    assert "{fold}" in _error_line(capsys)


def test_filled_placeholders_and_regex_braces_still_plan(tmp_path):
    from segkit.flow.pipeline import plan_pipeline

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\nsteps:\n  - notebook: 02_split\n    foreach: {seed: [1, 2]}\n"
                    "    parameters: {output_dir: 'splits_{seed}', "
                    "group_by: 'regex:^(\\w{2})'}\n")
    plan = plan_pipeline(spec)
    assert [p["output_dir"] for _, p, _ in plan] == ["splits_1", "splits_2"]
    assert plan[0][1]["group_by"] == "regex:^(\\w{2})"


# --- 2: an outputs folder that cannot be written ----------------------------------------------

@pytest.fixture
def outputs_under_a_file(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """SEGKIT_OUTPUTS below a regular file: creating it fails as a read-only folder would,
    also for root (whom chmod does not stop)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    monkeypatch.setenv("SEGKIT_OUTPUTS", str(blocker / "outputs"))
    return blocker, blocker / "outputs"


def test_train_into_an_unwritable_outputs_folder_is_one_line(sample_root, outputs_under_a_file,
                                                             capsys):
    blocker, outputs = outputs_under_a_file
    assert main(_train_args(sample_root)) == 2
    line = _error_line(capsys)
    assert str(outputs / "runs") in line and f"{blocker} is a file" in line
    assert blocker.read_text() == "a file, not a folder\n"


def test_lb_into_an_unwritable_outputs_folder_is_one_line(tmp_path, outputs_under_a_file,
                                                          capsys):
    blocker, outputs = outputs_under_a_file
    csv = tmp_path / "sub.csv"
    csv.write_text("image_id,PredictionString\n")
    assert main(["lb", str(csv), "0.5"]) == 2
    line = _error_line(capsys)
    assert str(outputs) in line and f"{blocker} is a file" in line


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into a chmod 0o555 folder: the read-only case is "
                           "tested through a path under a file instead")
def test_a_read_only_outputs_folder_is_one_line(tmp_path, monkeypatch, capsys):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    outputs.chmod(0o555)
    monkeypatch.setenv("SEGKIT_OUTPUTS", str(outputs))
    csv = tmp_path / "sub.csv"
    csv.write_text("image_id,PredictionString\n")
    try:
        assert main(["lb", str(csv), "0.5"]) == 2
        assert "permission denied" in _error_line(capsys)
    finally:
        outputs.chmod(0o755)


# --- 3: checkpoints that are cut short or gone -------------------------------------------------

def _fake_run(tmp_path: Path, sample_root: Path, name: str = "run") -> Path:
    """A run folder as training leaves it, without training: params.json and a config."""
    import torch

    run = tmp_path / name
    run.mkdir()
    (run / "params.json").write_text(json.dumps({
        "data_root": str(sample_root), "fold": None,
        "train_file": str(sample_root / "train.json"), "val_file": str(sample_root / "val.json")}))
    (run / "config.py").write_text("# not read before the checkpoint is\n")
    for it in (10, 20):
        torch.save({"state_dict": {"w": torch.zeros(3)}, "meta": {"iter": it}},
                   run / f"iter_{it}.pth")
    (run / "last_checkpoint").write_text(str(run / "iter_20.pth"))
    return run


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("which", ["best", "last"])
def test_predict_with_a_truncated_checkpoint_is_one_line(tmp_path, sample_root, capsys, which):
    run = _fake_run(tmp_path, sample_root)
    best = run / "best_mIoU_iter_10.pth"
    shutil.copy(run / "iter_10.pth", best)
    _cut(best if which == "best" else run / "iter_20.pth")
    assert zipfile.is_zipfile(run / "iter_10.pth")
    assert main(["predict", str(run), "--splits", "val", "--checkpoint", which]) == 2
    line = _error_line(capsys)
    cut = best if which == "best" else run / "iter_20.pth"
    assert str(cut) in line and "does not read back" in line
    assert "retrain" in line and "pick another" in line


def test_a_deleted_best_checkpoint_is_not_replaced_silently(tmp_path, sample_root, capsys):
    from segkit.results.runs import Run

    run = _fake_run(tmp_path, sample_root)
    (run / "summary.json").write_text(json.dumps(
        {"best_checkpoint": str(run / "best_mIoU_iter_10.pth"), "best_miou": 0.5}))
    assert main(["predict", str(run), "--splits", "val"]) == 2
    line = _error_line(capsys)
    assert "best_mIoU_iter_10.pth is gone" in line and "last, 10, 20" in line
    assert Run(run).checkpoint("last").name == "iter_20.pth"  # asked by name: still there

    # a run that never validated has no best: `best` is the last, and it says so
    (run / "summary.json").unlink()
    with pytest.warns(UserWarning, match="never validated.*using the last, iter_20.pth"):
        assert Run(run).checkpoint("best").name == "iter_20.pth"


def test_unknown_flips_are_refused(capsys):
    from segkit.predict.options import PredictOptions

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "some_run", "--flips", "x"])
    assert exit_info.value.code == 2 and "invalid choice: 'x'" in capsys.readouterr().err
    with pytest.raises(ParameterError, match="flips has 'x'; allowed: h, v"):
        PredictOptions(flips=["x"])  # 05_predict's `flips: [x]`


# --- 4: ensemble and oof inputs ----------------------------------------------------------------

def test_soft_ensemble_of_csvs_is_one_line(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for path in (a, b):
        path.write_text("image_id,PredictionString\n")
    assert main(["ensemble", "--method", "soft", "--out", str(tmp_path / "o.csv"),
                 str(a), str(b)]) == 2
    line = _error_line(capsys)
    assert str(a) in line and "not a prediction folder" in line and "--method hard" in line
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("method", ["soft", "hard"])
def test_a_vote_needs_two_distinct_inputs(tmp_path, monkeypatch, capsys, method):
    (tmp_path / "A").mkdir()
    monkeypatch.chdir(tmp_path)
    out = ["ensemble", "--method", method, "--out", "o.csv"]
    assert main([*out, "A"]) == 2
    assert "vote needs at least 2 " in _error_line(capsys)
    assert main([*out, "A", f"{tmp_path}/A/", "A/../A"]) == 2
    line = _error_line(capsys)
    assert "A and " in line and "are the same" in line and str(tmp_path / "A") in line


def test_oof_refuses_one_run_given_twice(tmp_path, sample_root, monkeypatch, capsys):
    run = _fake_run(tmp_path, sample_root, "lite0_fold0")
    monkeypatch.chdir(tmp_path)
    assert main(["oof", "lite0_fold0", f"{run}/", "lite0_fold0/../lite0_fold0"]) == 2
    line = _error_line(capsys)
    assert "are the same" in line and str(run) in line


# --- 5: more folds than the data allows --------------------------------------------------------

def test_split_with_more_folds_than_the_data_allows(sample_root, tmp_path, capsys):
    from segkit.coco.files import load_coco

    source = sample_root / "train_all.json"
    images = len(load_coco(source).images)
    assert main(["split", str(source), "--n-splits", str(images), "--out",
                 str(tmp_path / "s")]) == 2
    line = _error_line(capsys)
    assert f"n_splits={images}" in line and "allowed: 2.." in line and str(source) in line
    allowed = int(line.rsplit("2..", 1)[1])
    assert 2 <= allowed < images
    assert main(["split", str(source), "--n-splits", str(allowed), "--out",
                 str(tmp_path / "s")]) == 0  # the largest allowed works


# --- 6: copy-paste into a file -----------------------------------------------------------------

def test_copy_paste_out_root_that_is_a_file_is_one_line(sample_root, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    assert main(["copy-paste", str(sample_root / "train.json"), "--data-root",
                 str(sample_root), "--out-root", str(blocker)]) == 2
    line = _error_line(capsys)
    assert str(blocker) in line and "is a file" in line
    assert blocker.read_text() == "x"


# --- 8: augmentation options of the wrong type ---------------------------------------------------

@pytest.mark.parametrize("augment, where", [
    ([{"rotate": {"degree": "abc"}}], "augment rotate: option degree='abc'"),
    ([{"rotate": {"prob": 0.5, "degree": 20, "pad_val": "x"}}], "augment rotate: option pad_val"),
    ([{"resize_crop": {"ratio_range": "ab"}}], "augment resize_crop: option ratio_range"),
    ([{"cutmix": {"alpha": "x"}}], "augment cutmix: option alpha"),
])
def test_augment_options_of_the_wrong_type_are_refused_at_check_time(augment, where):
    from segkit.recipe.parameters import check_training_parameters

    with pytest.raises(ParameterError) as info:
        check_training_parameters({"augment": augment})
    assert where in str(info.value) and "\n" not in str(info.value)


def test_albumentations_options_of_the_wrong_type_are_refused(capsys, sample_root):
    pytest.importorskip("albumentations")
    from segkit.recipe.parameters import check_training_parameters

    with pytest.raises(ParameterError, match="augment noise: option std_range='abc'"):
        check_training_parameters({"augment": [{"noise": {"std_range": "abc"}}]})
    check_training_parameters({"augment": [{"noise": {"std_range": [0.1, 0.2]}}]})  # fine
    assert main(_train_args(sample_root, augment="[{noise: {std_range: abc}}]")) == 2
    assert "augment noise: option std_range" in _error_line(capsys)


# --- 9: zoo weights without network -------------------------------------------------------------

def test_a_failed_weight_download_names_the_url_and_load_from(monkeypatch):
    from mmengine.runner import checkpoint as ckpt_module

    import segkit.train  # noqa: F401  (wraps mmengine's http loader)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(ckpt_module, "load_url", offline)
    url = "https://download.openmmlab.com/mmsegmentation/v0.5/segformer/x.pth"
    with pytest.raises(SegkitError) as info:
        ckpt_module.CheckpointLoader.load_checkpoint(url)
    message = str(info.value)
    assert url in message and "load_from=PATH" in message and "\n" not in message


def test_train_with_zoo_weights_offline_is_one_line(sample_root, monkeypatch, capsys):
    from mmengine.runner import checkpoint as ckpt_module

    from segkit.train.models import model_config

    _, url = model_config("segformer_b0", num_classes=11, weights="zoo")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(ckpt_module, "load_url", offline)
    assert main(_train_args(sample_root, model="segformer_b0", weights="zoo",
                            run_name="zoo_offline")) == 2
    line = _error_line(capsys)
    assert url in line and "load_from=PATH" in line


# --- 10: a leaderboard file whose last line was cut ------------------------------------------------

@pytest.fixture
def submission(tmp_path, monkeypatch) -> Path:
    """A submission, and a leaderboard file of this test's own."""
    monkeypatch.setenv("SEGKIT_OUTPUTS", str(tmp_path / "outputs"))
    path = tmp_path / "sub.csv"
    path.write_text("image_id,PredictionString\n")
    return path


def test_lb_drops_a_cut_last_line_and_says_so(submission):
    from segkit.submission.leaderboard import leaderboard_file, read_scores, record_score

    first = record_score(submission, 0.5, "first")
    board = leaderboard_file()
    with open(board, "ab") as f:
        f.write(b'{"time": "2026-12-01T10:00:00+00:00", "submission": "/x.c')  # killed mid-line
    with pytest.warns(UserWarning, match=r"dropped its last line \(line 2, cut short"):
        record_score(submission, 0.6, "second")
    entries = read_scores()
    assert [e["note"] for e in entries] == ["first", "second"]
    assert entries[0] == first and board.read_bytes().endswith(b"\n")


def test_lb_keeps_a_whole_last_line_without_its_line_break(submission):
    from segkit.submission.leaderboard import leaderboard_file, read_scores, record_score

    record_score(submission, 0.5, "first")
    board = leaderboard_file()
    board.write_bytes(board.read_bytes().rstrip(b"\n"))
    record_score(submission, 0.6, "second")
    assert [e["note"] for e in read_scores()] == ["first", "second"]


def test_lb_refuses_to_append_to_a_file_broken_before_its_end(submission, capsys):
    from segkit.submission.leaderboard import leaderboard_file, record_score

    record_score(submission, 0.5, "first")
    board = leaderboard_file()
    board.write_text("not json\n" + board.read_text())
    before = board.read_bytes()
    assert main(["lb", str(submission), "0.7"]) == 2
    assert "line 1 is not a leaderboard entry" in _error_line(capsys)
    assert board.read_bytes() == before


# --- 11: leftovers of killed writers -------------------------------------------------------------

def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_next_writer_removes_a_killed_writers_leftovers(tmp_path):
    from segkit.core.paths import _host_tag, atomic_folder, write_text_atomic

    target = tmp_path / "pseudo"
    script = ("import sys, time\nfrom segkit.core.paths import atomic_folder\n"
              f"with atomic_folder({str(target)!r}) as building:\n"
              "    (building / 'half.npy').write_text('half')\n"
              "    print('writing', flush=True)\n    time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[1])
    assert writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".pseudo.")]
    assert len(left) == 1 and f"p{writer.pid}@" in left[0].name  # what a kill leaves

    dead_file = tmp_path / f".a.csv.p{_dead_pid()}@{_host_tag()}.xyz.tmp"
    dead_file.write_text("half")
    alive = tmp_path / f".b.csv.p{os.getpid()}@{_host_tag()}.xyz.tmp"  # a writer at work
    alive.write_text("being written")
    other_host = tmp_path / f".c.csv.p{_dead_pid()}@00000000.xyz.tmp"  # can't tell: kept
    other_host.write_text("being written elsewhere")
    with atomic_folder(target) as building:
        (building / "whole.npy").write_text("whole")
    assert not left[0].exists() and not dead_file.exists()
    assert alive.exists() and other_host.exists()
    assert sorted(p.name for p in target.iterdir()) == ["whole.npy"]
    write_text_atomic(tmp_path / "a.csv", "x\n")
    assert (tmp_path / "a.csv").read_text() == "x\n"


def test_a_split_removes_the_temporary_sets_of_killed_splits(sample_root, tmp_path):
    from segkit.folds.split import split_file

    out = tmp_path / "splits"
    killed = tmp_path / ".splits.ab12cd34.tmp"
    killed.mkdir()
    (killed / "fold0_train.json").write_text("{}")
    swapped = tmp_path / ".splits.zz99yy88.tmp.old"
    swapped.mkdir()
    unrelated = tmp_path / ".splits_notes.tmp"
    unrelated.mkdir()
    split_file(sample_root / "train_all.json", out, n_splits=3, seed=1)
    assert not killed.exists() and not swapped.exists() and unrelated.exists()
    assert (out / "fold2_val.json").is_file()


# --- 12: images too small to train on -----------------------------------------------------------

def test_a_1x1_image_is_refused_before_training(sample_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(sample_root, root)
    coco = json.loads((root / "train.json").read_text())
    image = coco["images"][0]
    cv2.imwrite(str(root / image["file_name"]), np.full((1, 1, 3), 90, np.uint8))
    image["width"] = image["height"] = 1
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != image["id"]]
    (root / "train.json").write_text(json.dumps(coco))
    assert main(["check-coco", str(root / "train.json"), "--data-root", str(root)]) == 0
    capsys.readouterr()
    assert main(_train_args(root, run_name="tiny_image")) == 2
    line = _error_line(capsys)
    assert str(root / "train.json") in line and image["file_name"] in line and "1x1" in line
    from segkit.core.paths import outputs_dir

    assert not (outputs_dir() / "runs" / "tiny_image").exists()


def test_images_that_resizing_shrinks_below_two_pixels_are_refused():
    from segkit.coco.files import Coco
    from segkit.train.sources import check_image_sizes, resize_limits

    images = [{"id": 1, "file_name": "square.jpg", "width": 2, "height": 2},
              {"id": 2, "file_name": "strip.jpg", "width": 2, "height": 200}]
    coco = Coco(Path("t.json"), images, [], [])
    pipeline = [{"type": "RandomResize", "scale": (96, 96), "ratio_range": (0.5, 2.0),
                 "keep_ratio": True}, {"type": "RandomCrop", "crop_size": (64, 64)}]
    resize = resize_limits({"type": "RepeatDataset", "dataset": {"pipeline": pipeline}})
    assert resize == ((96, 96), 0.5)
    with pytest.raises(CocoError, match=r"strip.jpg \(image 2\) is 2x200, 0x48 once resized"):
        check_image_sizes(coco, resize)
    check_image_sizes(Coco(Path("t.json"), images[:1], [], []), resize)  # 2x2 grows: fine


# --- 13: degenerate polygons, areas beyond the image ---------------------------------------------

def test_a_degenerate_polygon_warns_and_a_large_area_only_warns(tiny_coco):
    from segkit.coco.checks import validate

    tiny_coco["annotations"][0].update(segmentation=[[0, 0, 4, 3, 8, 6]], area=19995)
    tiny_coco["annotations"][1].update(area=480)  # ten times the 8x6 image
    problems, warnings = validate(tiny_coco, "t.json")
    assert problems == []
    assert any("annotation 10 (image 1): its polygons enclose no area" in w and "19995" in w
               for w in warnings)
    assert any("annotation 11 (image 1): area 480.0 exceeds the image's 48 pixels" in w
               for w in warnings)


def test_only_tagged_leftovers_of_dead_writers_are_removed(tmp_path):
    from segkit.core.paths import _host_tag, remove_leftovers

    pid = _dead_pid()
    keep = [tmp_path / f"a.csv.p{pid}@{_host_tag()}.x.tmp",  # not hidden: not ours
            tmp_path / f".a.csv.{pid}.x.tmp"]                  # no owner tag: left alone
    for path in keep:
        path.write_text("x")
    gone = tmp_path / f".a.csv.old.p{pid}@{_host_tag()}.x"
    gone.mkdir()
    assert remove_leftovers(tmp_path) == [gone]
    assert all(p.exists() for p in keep)


def test_lb_records_the_same_score_once(tmp_path, monkeypatch):
    """A rerun of `segkit lb` (after a kill, or by hand) does not record the score twice."""
    from segkit.submission.leaderboard import read_scores, record_score

    monkeypatch.setenv("SEGKIT_OUTPUTS", str(tmp_path / "outputs"))
    csv = tmp_path / "sub.csv"
    csv.write_text("image_id,PredictionString\na.jpg,0\n")
    first = record_score(csv, 0.61, "fold 0")
    assert record_score(csv, 0.61, "fold 0") == first
    record_score(csv, 0.62, "fold 0")  # another score is another entry
    assert [e["score"] for e in read_scores()] == [0.61, 0.62]
