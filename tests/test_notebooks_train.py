"""04_train and 05_predict executed by papermill on tiny data."""

import json

from segkit.core.paths import outputs_dir
from segkit.flow.cli import main
from tests.conftest import TINY_TRAIN, notebook_text, run_notebook


def test_04_train_notebook(sample_root, tmp_path):
    nb = run_notebook("04_train", tmp_path, data_root=str(sample_root),
                      train_file=str(sample_root / "train.json"),
                      val_file=str(sample_root / "val.json"), iters=20, val_interval=10,
                      run_name="nb_run", **{k: v for k, v in TINY_TRAIN.items()
                                            if k not in ("log_interval",)})
    text = notebook_text(nb)
    assert "best checkpoint:" in text and "val mIoU" in text
    run_dir = outputs_dir() / "runs" / "nb_run"
    assert json.loads((run_dir / "params.json").read_text())["iters"] == 20
    assert (run_dir / "config.py").exists() and list(run_dir.glob("best_mIoU_iter_*.pth"))
    # the per-class table of the best checkpoint is the last output
    last = nb.cells[-1].outputs[0]["data"]
    assert "text/html" in last and "Clothing" in last["text/html"] and "mIoU" in last["text/html"]


def test_train_cli(sample_root, tmp_path, capsys):
    code = main(["train", f"data_root={sample_root}", "fold=null",
                 f"train_file={sample_root / 'train.json'}",
                 f"val_file={sample_root / 'val.json'}", "iters=4", "val_interval=4",
                 "image_size=96", "crop_size=64", "num_workers=0", "weights=none",
                 f"work_dir={tmp_path / 'cli_run'}"])
    assert code == 0
    assert (tmp_path / "cli_run" / "iter_4.pth").exists()
    assert "best checkpoint" in capsys.readouterr().out


def test_train_cli_rejects_unknown_parameter(capsys):
    assert main(["train", "itters=4"]) == 2
    assert "unknown training parameters ['itters']" in capsys.readouterr().err


def test_05_predict_notebook(trained_run, sample_root, tmp_path):
    from segkit.submission.files import validate_submission

    nb = run_notebook("05_predict", tmp_path, run_dir=str(trained_run.work_dir), name="nb05",
                      flips=["h"], n_worst=2)
    text = notebook_text(nb)
    assert "validation mIoU:" in text and "valid)" in text
    out = outputs_dir() / "predictions" / "nb05"
    assert validate_submission(out / "test" / "submission.csv", sample_root / "test.json") == []
    assert (out / "val" / "meta.json").exists() and list((out / "val" / "labels").glob("*.png"))
    reported = float(text.split("validation mIoU: ")[1].split()[0])
    assert reported > 0.3  # the tiny run learns well beyond all-background (~0.08)


def test_executed_04_train_reads_as_a_report(sample_root, tmp_path):
    """mmengine's environment, full config and hook table go to the run's log file, not the
    notebook; no colour codes or import chatter; the loss and mIoU lines stay."""
    nb = run_notebook("04_train", tmp_path, data_root=str(sample_root),
                      train_file=str(sample_root / "train.json"),
                      val_file=str(sample_root / "val.json"), iters=4, val_interval=2,
                      log_interval=2, run_name="nb_quiet", image_size=96, crop_size=64,
                      num_workers=0, weights="none")
    outputs = "\n".join(str(o) for c in nb.cells for o in c.get("outputs", []))
    assert "Iter(train)" in outputs and "mIoU" in outputs
    for noise in ("Environment", "Config:", "\x1b[", "Could not import OneDL", "encryption",
                  "IProgress", "FileClient", "HardDiskBackend", "prefix is not set"):
        assert noise not in outputs, noise
    logs = list((outputs_dir() / "runs" / "nb_quiet").glob("*/*.log"))
    assert logs and "Config:" in logs[0].read_text()  # the dumps are in the log file


def test_05_predict_takes_papermill_text_for_lists(trained_run, sample_root, tmp_path):
    """`papermill ... -p scales "[0.75, 1.0]"` passes text: read as YAML."""
    nb = run_notebook("05_predict", tmp_path, run_dir=str(trained_run.work_dir), name="nb05t",
                      flips="[h]", scales="[0.75, 1.0]", splits="[val]", n_worst=1)
    assert "validation mIoU:" in notebook_text(nb)
    meta = json.loads((outputs_dir() / "predictions" / "nb05t" / "val" / "meta.json")
                      .read_text())
    assert meta["scales"] == [0.75, 1.0] and meta["flips"] == ["h"]


def test_notebooks_refuse_bad_and_undeclared_parameters(trained_run, tmp_path):
    import pytest

    from segkit.flow.notebook import NotebookError

    with pytest.raises(NotebookError, match=r"scales='big': expected a list .* -y 'scales: "):
        run_notebook("05_predict", tmp_path, run_dir=str(trained_run.work_dir), scales="big")
    with pytest.raises(NotebookError, match=r"has no parameters \['n_split'\]"):
        run_notebook("02_split", tmp_path, n_split=3)
    with pytest.raises(NotebookError, match=r"fold='abc': expected a fold index \(0, 1, "):
        run_notebook("04_train", tmp_path, fold="abc")


def test_predict_cli_finds_a_run_from_the_notebooks_folder(trained_run, monkeypatch, capsys):
    """`python -m segkit predict outputs/runs/NAME` means the same from notebooks/."""
    import shutil

    from segkit.core.paths import PROJECT_ROOT

    run = outputs_dir() / "runs" / "from_notebooks"
    if not run.exists():
        shutil.copytree(trained_run.work_dir, run)
    monkeypatch.chdir(PROJECT_ROOT / "notebooks")
    monkeypatch.setenv("SEGKIT_OUTPUTS", str(outputs_dir()))
    assert main(["predict", "runs/from_notebooks", "--splits", "val", "--flips"]) == 0
    assert "validation mIoU" in capsys.readouterr().out
