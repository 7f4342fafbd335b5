"""04_train and 05_predict executed by papermill on tiny data."""

import json

from segkit.__main__ import main
from segkit.paths import outputs_dir
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
    from segkit.submission import validate_submission

    nb = run_notebook("05_predict", tmp_path, run_dir=str(trained_run.work_dir), name="nb05",
                      flips=["h"], n_worst=2)
    text = notebook_text(nb)
    assert "validation mIoU:" in text and "valid)" in text
    out = outputs_dir() / "predictions" / "nb05"
    assert validate_submission(out / "test" / "submission.csv", sample_root / "test.json") == []
    assert (out / "val" / "meta.json").exists() and list((out / "val" / "labels").glob("*.png"))
    reported = float(text.split("validation mIoU: ")[1].split()[0])
    assert reported > 0.3  # the tiny run learns well beyond all-background (~0.08)
