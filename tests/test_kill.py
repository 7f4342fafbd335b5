"""Fault injection: SIGKILL at random (seeded) moments of `segkit split`, `predict`, `ensemble`
(hard and soft), `oof`, `lb` and a tiny `train`, each run as `python -m segkit` in a subprocess.

After every kill each output is checked as it lies: as it was before the command, whole as an
uninterrupted run writes it, or absent (a folder being swapped), never a mixture and never a
file cut short. Then the same command runs again and its result is compared with an
uninterrupted run's: byte for byte (file trees by sha256; the leaderboard line but for its
time), and for training: the run resumes or restarts, ends as a valid run folder with the
uninterrupted run's final and best weights, and predicts from that best checkpoint.

Kill moments: a command's uninterrupted run is timed first (from its start to the first change
under the folders it writes, and from there to its end). Most kills wait for the first change,
polled every few milliseconds, and fall at a random point of the writing window, so even a
command of a second is hit part-way; a fifth fall at a random point of its start-up. Slow
commands (predict, oof, train) are killed several times in a row before the uninterrupted rerun
(each rerun is the same command, killed again), which keeps the file's time in check. The
default suite kills split, lb, the votes, predict and oof 30 times in all; the training kills
are marked slow (`make test-slow`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

SEED = 20261206
# 30 kills in the default suite; training's 3 more under `make test-slow` (a training run is
# about 20 s on two cores, each kill and the rerun another run)
KILLS = {"split": 8, "lb": 6, "hard": 5, "soft": 5, "predict": 3, "oof": 3, "train": 3}
# ImageNet weights and no warm-up: six iterations that change the validation score (the best
# checkpoint is iteration 4 here, not the first), so a resumed run that skipped a validation
# would keep another best
TRAIN_ARGS = ["image_size=96", "crop_size=64", "batch_size=4", "num_workers=0", "log_interval=1",
              "warmup_iters=0", "lr=0.003", "iters=6", "val_interval=2", "deterministic=true",
              "resume=true"]


# --- running, timing and killing one command -----------------------------------------------


@dataclass
class Command:
    """`python -m segkit ARGS` with its own outputs folder; `watch`: the folders it writes in
    (its first change there starts the writing window)."""

    args: list[str]
    outputs: Path
    watch: list[Path]
    start: float = 0.0  # seconds from the start to its first change (uninterrupted)
    window: float = 0.0  # seconds from there to its end
    kills: list[str] = field(default_factory=list)

    def popen(self, **kwargs) -> subprocess.Popen:
        env = {**os.environ, "SEGKIT_OUTPUTS": str(self.outputs), "OMP_NUM_THREADS": "1",
               "PYTHONWARNINGS": "ignore"}
        return subprocess.Popen([sys.executable, "-m", "segkit", *self.args], env=env,
                                cwd=self.outputs.parent, start_new_session=True, **kwargs)

    def run(self) -> subprocess.CompletedProcess:
        """Uninterrupted; exit 0 (else the test fails with its output)."""
        proc = self.popen(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"segkit {' '.join(self.args)}: exit {proc.returncode}\n" \
                                     f"{out[-2000:]}\n{err[-3000:]}"
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def timed(self) -> subprocess.CompletedProcess:
        """Run uninterrupted and time it (`start`, `window`)."""
        before, began = _snapshot(self.watch), time.monotonic()
        proc = self.popen(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = None
        while proc.poll() is None:
            if first is None and _snapshot(self.watch) != before:
                first = time.monotonic()
            time.sleep(0.003)
        out, err = proc.communicate()
        assert proc.returncode == 0, f"segkit {' '.join(self.args)}: {err[-3000:]}"
        end = time.monotonic()
        self.start = (first or end) - began
        self.window = max(end - (first or end), 0.05)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def kill(self, rng: random.Random) -> bool:
        """Start it and SIGKILL it at a random moment (module docstring); False when it ended
        first."""
        before, began = _snapshot(self.watch), time.monotonic()
        proc = self.popen(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if rng.random() < 0.2:
            at, what = began + rng.uniform(0.3, 1.0) * self.start, "start-up"
        else:
            while proc.poll() is None and _snapshot(self.watch) == before:
                time.sleep(0.002)
            delay = rng.uniform(0.0, self.window)
            at, what = time.monotonic() + delay, f"writing +{delay:.2f}s"
        while proc.poll() is None and time.monotonic() < at:
            time.sleep(0.002)
        if proc.poll() is not None:
            return False
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.kills.append(f"{what} (at {time.monotonic() - began:.2f}s)")
        return True

    def kill_many(self, rng: random.Random, count: int, after_each, reset) -> None:
        """`count` kills; `after_each()` checks what each left; `reset()` puts the outputs
        back as before the command when it ended before its kill (a chain of kills then
        starts again from the beginning)."""
        tries = 0
        while len(self.kills) < count:
            tries += 1
            assert tries <= 6 * count, f"{self.args[0]}: it ended before the kill {tries} times"
            if self.kill(rng):
                after_each()
            else:
                reset()
        print(f"segkit {self.args[0]}: start-up {self.start:.2f}s, writing {self.window:.2f}s; "
              f"killed at {', '.join(self.kills)}; {tries - count} ended first")


def _snapshot(roots: list[Path]) -> dict:
    """Every entry under `roots` (hidden ones too): size and modification time."""
    seen = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(folder, name)
                try:
                    stat = os.lstat(path)
                except FileNotFoundError:
                    continue
                seen[path] = (stat.st_size, stat.st_mtime_ns)
    return seen


def tree(path: Path, skip=()) -> dict | None:
    """{relative path: sha256} of the visible files under `path` (a file: {name: sha256});
    None when absent. Hidden entries (temporary siblings, locks) are not results."""
    if not path.exists():
        return None
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    found = {}
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), path)
            if not name.startswith(".") and rel not in skip:
                found[rel] = hashlib.sha256(Path(folder, name).read_bytes()).hexdigest()
    return found


def assert_whole(path: Path, *states, what: str = "") -> None:
    """`path` as one of `states` (trees; None: absent), never a mixture."""
    now = tree(path)
    assert any(now == s for s in states), \
        f"{what or path}: after a kill it is neither as before nor whole: {_diff(now, states)}"


def _diff(now, states) -> str:
    if now is None:
        return "absent"
    ref = next((s for s in states if s), {})
    return f"files {sorted(set(now) ^ set(ref))[:5]}, changed " \
           f"{sorted(k for k in set(now) & set(ref) if now[k] != ref[k])[:5]}"


def restore(saved: dict[Path, Path | None]) -> None:
    """Put folders / files back as saved copies (None: absent)."""
    for target, copy in saved.items():
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        if copy is not None:
            (shutil.copytree if copy.is_dir() else shutil.copy2)(copy, target)


def save(paths: list[Path], to: Path) -> dict[Path, Path | None]:
    saved = {}
    to.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(paths):
        copy = to / f"{k}_{path.name}"
        if path.exists():
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, copy)
        saved[path] = copy if path.exists() else None
    return saved


# --- the world: a split, a trained fold run, prediction folders to vote ---------------------


@pytest.fixture(scope="module")
def world(sample_root, tmp_path_factory):
    """A 3-fold split of the sample, and `base_fold0`: fold 0 trained uninterrupted by the
    same `segkit train` command the training kills use (6 iterations), timed."""
    from segkit.folds.split import split_file

    root = tmp_path_factory.mktemp("kill_world")
    split_file(sample_root / "train_all.json", root / "splits", n_splits=3, seed=42)
    outputs = root / "outputs"
    (outputs / "runs").mkdir(parents=True)
    train = Command(["train", f"data_root={sample_root}", "fold=0",
                     f"splits_dir={root / 'splits'}", *TRAIN_ARGS, "run_name=base_fold0"],
                    outputs, [outputs / "runs"])
    train.timed()
    return {"root": root, "sample": sample_root, "splits": root / "splits",
            "run": outputs / "runs" / "base_fold0", "train": train}


def _fold_runs(world, outputs: Path) -> list[Path]:
    """base_fold0 and copies of it as the runs of folds 1 and 2 (the same weights; data.json
    naming their fold's files)."""
    from segkit.results.run_data import data_record
    from segkit.results.runs import Run

    runs = [world["run"]]
    for k in (1, 2):
        folder = outputs / "runs" / f"base_fold{k}"
        if not folder.exists():
            shutil.copytree(world["run"], folder)
            params = json.loads((folder / "params.json").read_text())
            (folder / "params.json").write_text(json.dumps({**params, "fold": k}))
            (folder / "data.json").unlink()
            Run(folder).record_data(data_record(
                world["sample"], world["splits"] / f"fold{k}_train.json",
                world["splits"] / f"fold{k}_val.json", (), world["splits"], k))
        runs.append(folder)
    return runs


def _prediction_folders(root: Path, count: int, images: int = 24) -> list[Path]:
    """`count` test prediction folders of random probabilities (256x256, 11 classes), each
    with its submission.csv: the inputs of the votes."""
    from segkit.core.classes import TRASH
    from segkit.results.predictions import save_probs, write_prediction_meta
    from segkit.submission.files import write_submission

    rng = np.random.default_rng(0)
    entries = [{"id": i, "file_name": f"batch_01_vt/{i:04d}.jpg", "width": 512, "height": 512}
               for i in range(images)]
    folders = []
    for k in range(count):
        folder = root / f"model{k}" / "test"
        labels = []
        for img in entries:
            probs = rng.dirichlet(np.ones(len(TRASH.names)), size=(256, 256)).transpose(2, 0, 1)
            save_probs(folder, img["id"], probs.astype(np.float32))
            labels.append(probs.argmax(0).astype(np.uint8))
        write_submission(folder / "submission.csv", [e["file_name"] for e in entries], labels,
                         num_classes=len(TRASH.names))
        write_prediction_meta(folder, entries, list(TRASH.names), (256, 256), "test")
        folders.append(folder)
    return folders


# --- the commands --------------------------------------------------------------------------


def test_kill_split(sample_root, tmp_path):
    """The fold set is swapped in whole: after a kill the folder holds the previous split
    (seed 7, its report kept) or the new one (seed 42), never some of each."""
    from segkit.folds.split import split_file

    rng = random.Random(f"{SEED}-split")
    out = tmp_path / "w" / "splits"
    source = sample_root / "train_all.json"
    split_file(source, out, n_splits=3, seed=7)
    (out / "fold_report.csv").write_text("kept\n")
    saved = save([out], tmp_path / "saved")
    before = tree(out)
    cmd = Command(["split", str(source), "--n-splits", "3", "--seed", "42", "--out", str(out)],
                  tmp_path / "outputs", [out.parent])
    cmd.timed()
    after = tree(out)
    assert after != before and after["fold_report.csv"] == before["fold_report.csv"]

    def check():
        assert_whole(out, before, after)
        cmd.run()
        assert tree(out) == after
        restore(saved)

    restore(saved)
    cmd.kill_many(rng, KILLS["split"], check, lambda: restore(saved))


def test_kill_lb(tmp_path):
    """`segkit lb` appends one whole line: after a kill the leaderboard holds its earlier
    lines and at most this one, whole; the rerun's line equals an uninterrupted run's but for
    its time, and a rerun after a kill that came after the write records it once only."""
    rng = random.Random(f"{SEED}-lb")
    folder = _prediction_folders(tmp_path / "pred", 1, images=2)[0]
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    board = outputs / "leaderboard.jsonl"
    earlier = json.dumps({"time": "2026-01-01T00:00:00+00:00", "submission": "/x.csv",
                          "sha256": "0" * 64, "score": 0.5, "note": "earlier"}) + "\n"
    board.write_text(earlier)
    cmd = Command(["lb", str(folder / "submission.csv"), "0.61", "--note", "kill"], outputs,
                  [outputs])
    cmd.timed()
    lines = board.read_text().splitlines()
    assert lines[0] == earlier.strip() and len(lines) == 2
    entry = {k: v for k, v in json.loads(lines[1]).items() if k != "time"}

    def entries() -> list[dict]:
        text = board.read_text()
        assert text.endswith("\n"), "a line cut short"
        rows = [json.loads(line) for line in text.splitlines()]
        assert rows[0]["note"] == "earlier"
        assert all({k: v for k, v in r.items() if k != "time"} == entry for r in rows[1:])
        return rows[1:]

    def check():
        assert len(entries()) <= 1
        cmd.run()
        assert len(entries()) == 1
        board.write_text(earlier)

    board.write_text(earlier)
    cmd.kill_many(rng, KILLS["lb"], check, lambda: board.write_text(earlier))


@pytest.mark.parametrize("method", ["hard", "soft"])
def test_kill_ensemble(tmp_path, method):
    """The vote's CSV is written beside its name and renamed: after a kill it is the earlier
    vote (other weights) or the whole new one."""
    rng = random.Random(f"{SEED}-{method}")
    folders = _prediction_folders(tmp_path / "pred", 3)
    inputs = [str(f / "submission.csv") if method == "hard" else str(f) for f in folders]
    out = tmp_path / "w" / f"{method}.csv"
    out.parent.mkdir()
    earlier = Command(["ensemble", "--method", method, "--out", str(out), "--weights", "3", "1",
                       "1", *inputs], tmp_path / "outputs", [out.parent])
    earlier.run()
    saved = save([out], tmp_path / "saved")
    before = tree(out)
    cmd = Command(["ensemble", "--method", method, "--out", str(out), *inputs],
                  tmp_path / "outputs", [out.parent])
    cmd.timed()
    after = tree(out)
    assert after != before

    def check():
        assert_whole(out, before, after)
        cmd.run()
        assert tree(out) == after
        restore(saved)

    restore(saved)
    cmd.kill_many(rng, KILLS[method], check, lambda: restore(saved))


def test_kill_predict(world, tmp_path):
    """`segkit predict` (validation scored, test submission): each prediction folder is absent
    or whole after a kill; the local score beside the submission is absent or whole; the
    rerun's folders equal an uninterrupted run's byte for byte."""
    rng = random.Random(f"{SEED}-predict")
    outputs = tmp_path / "outputs"
    pred = outputs / "predictions" / "base_fold0"
    pred.mkdir(parents=True)
    cmd = Command(["predict", str(world["run"]), "--flips", "h"], outputs, [pred])
    cmd.timed()
    val, test = tree(pred / "val"), tree(pred / "test")
    score = "submission.csv.score.json"
    assert score in test and len(val) > 2
    test_unscored = {k: v for k, v in test.items() if k != score}

    def reset():
        shutil.rmtree(pred)
        pred.mkdir()

    def check():
        assert_whole(pred / "val", None, val)
        assert_whole(pred / "test", None, test_unscored, test)

    reset()
    cmd.kill_many(rng, KILLS["predict"], check, reset)
    cmd.run()
    assert (tree(pred / "val"), tree(pred / "test")) == (val, test)


def test_kill_oof(world, tmp_path):
    """`segkit oof` over three fold runs: every fold's prediction folder and the merged OOF
    folder (probabilities, meta.json, score.json) are absent or whole after a kill."""
    rng = random.Random(f"{SEED}-oof")
    outputs = tmp_path / "outputs"
    runs = _fold_runs(world, outputs)
    (outputs / "predictions").mkdir()
    (outputs / "oof").mkdir()
    cmd = Command(["oof", *map(str, runs), "--name", "kill"], outputs,
                  [outputs / "predictions", outputs / "oof"])
    cmd.timed()
    units = [outputs / "predictions" / r.name / "val" for r in runs] + [outputs / "oof" / "kill"]
    whole = [tree(u) for u in units]
    assert "score.json" in whole[-1] and all(whole)

    def reset():
        for folder in ("predictions", "oof"):
            shutil.rmtree(outputs / folder)
            (outputs / folder).mkdir()

    def check():
        for unit, state in zip(units, whole):
            assert_whole(unit, None, state)

    reset()
    cmd.kill_many(rng, KILLS["oof"], check, reset)
    cmd.run()
    assert [tree(u) for u in units] == whole


@pytest.mark.slow
def test_kill_train(world, tmp_path):
    """A tiny `segkit train ... resume=true` killed at random moments and run again: after a
    kill every checkpoint there reads back whole, data.json is whole; the rerun resumes (or
    restarts) and ends with the uninterrupted run's final and best weights, best checkpoint
    name, score and logged steps, and predicts from that best checkpoint."""
    import torch

    from segkit.results.runs import Run

    rng = random.Random(f"{SEED}-train")
    outputs = tmp_path / "outputs"
    (outputs / "runs").mkdir(parents=True)
    base, timing = Run(world["run"]), world["train"]
    folder = outputs / "runs" / "killed_fold0"
    cmd = Command(["train", f"data_root={world['sample']}", "fold=0",
                   f"splits_dir={world['splits']}", *TRAIN_ARGS, "run_name=killed_fold0"],
                  outputs, [outputs / "runs"], start=timing.start, window=timing.window)

    def check():
        run = Run(folder)
        for path in folder.glob("*.pth"):
            assert _reads_back(path), f"{path.name}: cut short by the kill"
        if (folder / "data.json").exists():
            assert json.loads((folder / "data.json").read_text()) == \
                json.loads((base.path / "data.json").read_text())
        if run.last_checkpoint is not None:
            assert run.last_checkpoint.is_file() and _reads_back(run.last_checkpoint)
        if (folder / "summary.json").exists():  # killed after the end: the run is whole
            assert run.last_checkpoint.name == base.last_checkpoint.name

    cmd.kill_many(rng, KILLS["train"], check, lambda: shutil.rmtree(folder, ignore_errors=True))
    out = cmd.run().stdout
    assert "run folder:" in out
    run = Run(folder)
    assert run.last_checkpoint.name == base.last_checkpoint.name
    assert run.best_checkpoint.name == base.best_checkpoint.name
    a = torch.load(base.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    b = torch.load(run.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert run.summary().best_miou == pytest.approx(base.summary().best_miou, abs=1e-6)
    assert set(run.scalars()["step"]) == set(base.scalars()["step"])

    # its best checkpoint holds the uninterrupted run's best weights, and predictions made
    # now come from it (never from a checkpoint of a killed session)
    a = torch.load(base.best_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    b = torch.load(run.best_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    Command(["predict", str(folder), "--splits", "val", "--flips"], outputs, []).run()
    meta = json.loads((outputs / "predictions" / run.name / "val" / "meta.json").read_text())
    assert meta["checkpoint"] == str(run.best_checkpoint.resolve())


def _reads_back(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path):
            return True
    except (OSError, zipfile.BadZipFile):
        return False

