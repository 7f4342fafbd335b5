"""One run over several processes: torchrun with mmengine's `pytorch` launcher, on the CPU with
two gloo processes (on GPUs the same command uses NCCL and one GPU per process)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import tiny_train_params


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_torchrun_trains_one_run_over_two_processes(sample_root, tmp_path):
    from segkit.core.paths import outputs_dir

    params = tiny_train_params(sample_root, iters=4, val_interval=4, batch_size=2,
                               weights="none", work_dir=str(tmp_path / "ddp"))
    args = [f"{k}={'null' if v is None else v}" for k, v in params.items()]
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable),
                                                       "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", SEGKIT_OUTPUTS=str(outputs_dir()))
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "segkit",
                           "train", *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    work = tmp_path / "ddp"
    assert (work / "iter_4.pth").exists()
    assert json.loads((work / "params.json").read_text())["launcher"] == "auto"
    log = next(work.glob("*/*.log")).read_text()
    assert "Distributed launcher: pytorch" in log and "GPU number: 2" in log  # 2 processes
