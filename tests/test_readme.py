"""The README's headline commands, as written, on the tiny sample: only paths are moved into the
test's folders and tiny sizes added, so the commands a new user copies cannot rot."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from segkit.core.paths import PROJECT_ROOT

MARKER = "<!-- tested: these lines run in tests/test_readme.py -->"
TINY = {"04_train": "-p iters 4 -p val_interval 2 -p image_size 96 -p crop_size 64 "
                    "-p num_workers 0 -p weights none",
        "05_predict": "-p n_worst 1"}


def readme_commands() -> list[str]:
    text = (PROJECT_ROOT / "README.md").read_text()
    block = text.split(MARKER, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_has_its_tested_commands():
    commands = readme_commands()
    assert any(c.startswith("papermill notebooks/04_train.ipynb") and "-p fold 3" in c
               for c in commands)
    assert any('-p scales "[0.75, 1.0, 1.25]"' in c for c in commands)


def test_readme_commands_run_as_written(sample_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sample_root, data)
    outputs = tmp_path / "outputs"
    env = dict(os.environ, SEGKIT_OUTPUTS=str(outputs), OMP_NUM_THREADS="2")
    bin_dir = Path(sys.executable).parent
    for command in readme_commands():
        command = command.replace("/data/trash", str(data))
        command = re.sub(r"(?<![\w/])outputs/", f"{outputs}/", command)
        command = command.replace(" out.ipynb", f" {tmp_path / 'out.ipynb'}")
        for notebook, extra in TINY.items():
            if command.startswith(f"papermill notebooks/{notebook}"):
                command += " " + extra
        argv = shlex.split(command)
        argv[0] = sys.executable if argv[0] == "python" else str(bin_dir / argv[0])
        done = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    submission = outputs / "predictions" / "efficientnet_lite0_fold3" / "test" / "submission.csv"
    assert submission.exists()
