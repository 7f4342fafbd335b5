"""Mask2Former end to end on the CPU: trained (2 iterations, 64 px), then predicted by 05_predict
(papermill: a fresh kernel) and by `segkit predict` in a fresh process (where the import order
once made mmseg's head report "Please install onedl-mmdetection"), soft-voted with another
model by 07_ensemble, and pseudo-labelled with a second round by 06_pseudo_label."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from segkit.core.paths import outputs_dir
from segkit.results.predictions import PredictionFolder
from segkit.submission.files import validate_submission
from tests.conftest import notebook_text, run_notebook, tiny_train_params

pytestmark = pytest.mark.slow  # about 4 minutes on 2 cores


@pytest.fixture(scope="module")
def m2f_run(sample_root, tmp_path_factory):
    from segkit.train.training import run

    work_dir = tmp_path_factory.mktemp("runs") / "m2f"
    return run(**tiny_train_params(sample_root, model="mask2former_swin_t", weights="none",
                                   iters=2, val_interval=2, image_size=64, crop_size=64,
                                   batch_size=2, warmup_iters=0, num_workers=0,
                                   work_dir=str(work_dir)))


def _probabilities_sum_to_one(folder: PredictionFolder):
    for image in folder.meta["images"]:
        total = folder.probs(image["id"]).astype(np.int32).sum(0)
        assert np.abs(total - 255).max() <= 11, image  # uint8 rounding of 11 classes


def test_mask2former_predicts_ensembles_and_pseudo_labels(m2f_run, trained_run, sample_root,
                                                          tmp_path):
    assert m2f_run.last_checkpoint.name == "iter_2.pth"
    test_json = sample_root / "test.json"
    # 05 in a fresh kernel
    nb = run_notebook("05_predict", tmp_path, run_dir=str(m2f_run.work_dir), flips=[],
                      name="m2f_nb")
    assert "validation mIoU" in notebook_text(nb)
    nb_test = PredictionFolder(outputs_dir() / "predictions" / "m2f_nb" / "test")
    assert validate_submission(nb_test.submission, test_json, 11, (256, 256)) == []
    _probabilities_sum_to_one(nb_test)
    # the CLI in a fresh process
    done = subprocess.run([sys.executable, "-m", "segkit", "predict", str(m2f_run.work_dir),
                           "--flips", "--name", "m2f_cli"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "SEGKIT_OUTPUTS": str(outputs_dir())})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation mIoU" in done.stdout and "Please install" not in done.stderr
    assert "Line NMS" not in done.stdout + done.stderr
    cli_test = PredictionFolder(outputs_dir() / "predictions" / "m2f_cli" / "test")
    assert cli_test.submission.read_bytes() == nb_test.submission.read_bytes()
    # 07: Mask2Former's probabilities soft-voted with an EfficientNet run's
    nb = run_notebook("07_ensemble", tmp_path, data_root=str(sample_root), flips=[],
                      run_dirs=[str(m2f_run.work_dir), str(trained_run.work_dir)],
                      method="soft", name="m2f_ens", n_examples=1)
    assert "valid for test.json" in notebook_text(nb)
    assert validate_submission(outputs_dir() / "ensembles" / "m2f_ens.csv", test_json, 11,
                               (256, 256)) == []
    # 06: pseudo labels from Mask2Former and its second round (04_train in a fresh kernel)
    nb = run_notebook("06_pseudo_label", tmp_path, data_root=str(sample_root), flips=[],
                      run_dirs=[str(m2f_run.work_dir)], threshold=0.05, name="m2f_pseudo",
                      round2_name="m2f_round2", round2_iters=2, round2_val_interval=2,
                      num_workers=0, n_examples=1)
    assert "labelled: 100.0% of all pixels" in notebook_text(nb)  # every top >= 1/11
    round2 = outputs_dir() / "runs" / "m2f_round2"
    params = json.loads((round2 / "params.json").read_text())
    assert params["model"] == "mask2former_swin_t" and params["iters"] == 2
    assert (round2 / "iter_2.pth").exists()
