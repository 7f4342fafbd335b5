"""Recipe search (segkit.search, segkit.flow.studies): spaces, the study's worker loop, a search
killed part-way and resumed (no trial lost or run twice), pruning from real training, the
winner spec, the CLI without the extra, and 09_search on a finished study.

The worker loop is tested with a stand-in for 04_train (`fake_train`: it reports to the trial
as the training hook does, writes checkpoints, scalars and a summary, and resumes from its last
checkpoint), so the study logic runs in seconds; the real notebooks run in the slow test."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segkit.core.errors import ParameterError
from segkit.core.paths import PROJECT_ROOT

optuna = pytest.importorskip("optuna")

SPACE = {"lr": {"log_uniform": [0.0001, 0.1]},
         "loss": {"choice": ["ce", "ce+dice"]},
         "augment": {"choice": {"base": ["flip", "resize_crop"],
                                "colour": ["flip", "resize_crop", "photometric"]}},
         "sizes": {"choice": {"s": {"image_size": 96, "crop_size": 64},
                              "m": {"image_size": 128, "crop_size": 96}}}}
BASE = {"fold": 0, "iters": 40, "val_interval": 10, "num_workers": 0}


def fake_train(params: dict, environment: dict) -> None:
    """04_train's stand-in: `iters` steps, a validation (reported to the trial, pruning as the
    hook does) and a checkpoint every val_interval; resumes from its last checkpoint. Each start
    is logged to the study folder's starts.log: "<run> <first step>"."""
    from segkit.core.trials import TRIAL_ENV, open_trial

    work = Path(params["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    link = json.loads(environment[TRIAL_ENV])
    trial = open_trial(link)
    done = [int(p.stem.split("_")[1]) for p in work.glob("iter_*.pth")]
    first = max(done, default=0)
    assert bool(params.get("resume")) == bool(done), "resume exactly when there are checkpoints"
    with open(work.parents[1] / "starts.log", "a") as log:
        log.write(f"{work.name} {first}\n")
    scalars = work / f"t{first}" / "vis_data" / "scalars.json"
    scalars.parent.mkdir(parents=True, exist_ok=True)
    quality = max(0.05, 1 - abs(math.log10(params["lr"]) + 2.5) / 3)
    for step in range(first + params["val_interval"], params["iters"] + 1,
                      params["val_interval"]):
        time.sleep(float(os.environ.get("FAKE_STEP_SECONDS", "0")))
        miou = quality * step / params["iters"]
        with open(scalars, "a") as f:
            f.write(json.dumps({"step": step, "mIoU": miou, "IoU.Background": miou + 0.1,
                                "IoU.Paper": miou - 0.1}) + "\n")
        (work / f"iter_{step}.pth").write_bytes(b"")
        trial.report(miou, link["step_offset"] + step)
        if trial.should_prune():
            (work / "pruned.json").write_text(json.dumps({"step": step}))
            break
    (work / "summary.json").write_text("{}")


def make_study(name: str, n_trials: int = 5, storage: str = "", **search):
    from segkit.search import SearchStudy, parse_search

    section = {"space": SPACE, "n_trials": n_trials, "sampler": {"type": "tpe", "seed": 1},
               "pruner": "none", **search}
    return SearchStudy(name, parse_search(section, "test.yaml", BASE), {0: dict(BASE)},
                       storage=storage)


def worker_main(name: str, n_trials: int) -> None:
    """A worker in another process (the kill test): `python -c` calls this."""
    make_study(name, n_trials).work(fake_train, worker="doomed")


def test_space_checks_name_the_entry():
    from segkit.search import parse_space

    dims = parse_space(SPACE, "s.yaml", BASE)
    assert [d.name for d in dims] == ["lr", "loss", "augment", "sizes"]
    assert dims[2].labels == ["base", "colour"] and dims[3].bundle
    assert dims[1].value("ce+dice") == "ce+dice"
    bad = [({"lrr": {"log_uniform": [0.1, 1]}}, "not a training parameter"),
           ({"lr": {"log_uniform": [0, 1]}}, "low > 0"),
           ({"lr": {"uniform": [0.1]}}, "[low, high]"),
           ({"loss": {"choice": ["ce", "nonsense"]}}, "'nonsense'"),
           ({"iters": {"int": [0, 10]}}, "at least 1"),
           ({"sizes": {"choice": [1, 2]}}, "bundle"),
           ({"lr": {"choice": [0.1]}, "s": {"choice": {"a": {"lr": 0.2}}}}, "searched twice")]
    for space, message in bad:
        with pytest.raises(ParameterError, match="s.yaml") as info:
            parse_space(space, "s.yaml", BASE)
        assert message in str(info.value)


def test_search_section_checks():
    from segkit.search import parse_search

    for section, message in [({"space": SPACE, "pruner": "nope"}, "allowed"),
                             ({"space": SPACE, "objective": "oof_miou"}, "two or more"),
                             ({"space": SPACE, "trial": {"lr": 0.1}}, "both searched"),
                             ({"space": SPACE, "n_trial": 3}, "unknown search keys")]:
        with pytest.raises(ParameterError, match=message):
            parse_search(section, "s.yaml", BASE)


def test_study_runs_its_trials_and_names_the_winner():
    study = make_study("unit", n_trials=4)
    assert study.work(fake_train, log=lambda _: None) == [0, 1, 2, 3]
    table = study.trials_table()
    assert list(table["state"]) == ["COMPLETE"] * 4
    number, values = study.winner()
    assert table["value"].max() == table.loc[number, "value"]
    assert set(values) == {"lr", "loss", "augment", "image_size", "crop_size"}
    assert isinstance(values["augment"], list)
    assert study.work(fake_train) == []  # the study has its trials: nothing more runs
    per_class = study.per_class(study.best_trials(top=2))
    assert list(per_class.index) == ["Background", "Paper"] and per_class.shape[1] == 2


def test_any_storage_url(tmp_path):
    study = make_study("rdb", n_trials=2, storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study.work(fake_train, log=lambda _: None) == [0, 1]
    assert (tmp_path / "study.db").is_file() and not study.folder.joinpath("journal.log").exists()


def test_killed_search_resumes_without_losing_or_repeating_a_trial(tmp_path):
    """A worker is killed (SIGKILL) inside a trial; the search started again takes that trial
    over (same number and parameters, its run continued from its last checkpoint) and runs the
    rest: every trial once."""
    name, n_trials = "killed", 5
    study = make_study(name, n_trials)
    env = {**os.environ, "FAKE_STEP_SECONDS": "0.5", "PYTHONPATH": str(PROJECT_ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-c", f"from tests.test_search import worker_main; "
                               f"worker_main({name!r}, {n_trials})"],
        cwd=PROJECT_ROOT, env=env, start_new_session=True)
    starts = study.folder / "starts.log"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # kill it inside trial 2, after its first checkpoint
            run = study.run_dir(2, 0)
            if list(run.glob("iter_*.pth")):
                break
            assert worker.poll() is None, "the worker ended before it was killed"
            time.sleep(0.05)
        else:
            pytest.fail("trial 2 never started")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    before = study.trials_table()
    assert list(before["state"]) == ["COMPLETE", "COMPLETE", "RUNNING"]
    params_before = before.loc[2, ["lr", "loss", "augment"]].to_dict()

    assert make_study(name, n_trials).work(fake_train, log=lambda _: None) == [2, 3, 4]
    after = study.trials_table()
    assert list(after.index) == list(range(n_trials))
    assert list(after["state"]) == ["COMPLETE"] * n_trials
    assert after.loc[2, ["lr", "loss", "augment"]].to_dict() == params_before
    lines = starts.read_text().split("\n")[:-1]
    runs = [line.split()[0] for line in lines]
    # each trial's run started from step 0 once; trial 2 once more, from its checkpoint
    assert sorted(r for r, line in zip(runs, lines) if line.endswith(" 0")) == \
        [f"{name}_t{k:04d}_fold0" for k in range(n_trials)]
    resumed = [line for line in lines if not line.endswith(" 0")]
    assert len(resumed) == 1 and resumed[0].startswith(f"{name}_t0002_fold0 ")
    assert not list((study.folder / "trials").glob("*.json"))  # no owner left behind


def test_parallel_workers_share_the_study_and_never_overshoot():
    import threading

    studies = [make_study("shared", n_trials=6) for _ in range(3)]
    ran: list = []
    threads = [threading.Thread(target=lambda s=s: ran.extend(
        s.work(fake_train, worker=f"w{id(s)}", log=lambda _: None))) for s in studies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ran) == list(range(6))
    assert list(studies[0].trials_table()["state"]) == ["COMPLETE"] * 6


def test_pruned_trials_stop_early():
    study = make_study("pruning", n_trials=6,
                       pruner={"type": "median", "n_startup_trials": 1})
    study.work(fake_train, log=lambda _: None)
    table = study.trials_table()
    assert (table["state"] == "PRUNED").any()
    pruned = table[table["state"] == "PRUNED"]
    assert (pruned["last_step"] < BASE["iters"]).all()


def test_training_reports_to_its_trial_and_stops_when_pruned(sample_root, tmp_path,
                                                             monkeypatch):
    """Real training with SEGKIT_TRIAL set: each validation is reported at its iteration, and
    a pruner that finds it worse than a finished trial stops it cleanly after the first."""
    from segkit.core.trials import open_storage, trial_environment
    from segkit.results.runs import Run
    from segkit.train.training import run
    from tests.conftest import tiny_train_params

    storage = str(tmp_path / "journal.log")
    study = optuna.create_study(study_name="hook", storage=open_storage(storage),
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        value=0.99, intermediate_values={10: 0.99, 20: 0.99, 30: 0.99}))
    number = study.ask().number
    pruner = {"type": "median", "n_startup_trials": 1}
    monkeypatch.setenv(*next(iter(trial_environment(storage, "hook", number, 0,
                                                    pruner).items())))
    work_dir = tmp_path / "run"
    run(**tiny_train_params(sample_root, iters=30, val_interval=10, work_dir=str(work_dir)))
    pruned = json.loads((work_dir / "pruned.json").read_text())
    assert pruned["step"] == 10
    trial = study.trials[number]
    assert list(trial.intermediate_values) == [10]
    assert trial.intermediate_values[10] == pytest.approx(Run(work_dir).summary().best_miou)
    assert json.loads((work_dir / "trial_process.json").read_text())["pid"] == os.getpid()
    assert Run(work_dir).last_checkpoint.name == "iter_10.pth"  # stopped after 10 of 30


def write_spec(path: Path, sample_root: Path, name: str, **search) -> Path:
    import yaml

    spec = {"name": name, "parameters": {"data_root": str(sample_root), "num_workers": 0},
            "steps": [{"notebook": "02_split",
                       "parameters": {"n_splits": 3, "output_dir": f"splits_{name}"}},
                      {"notebook": "04_train", "foreach": {"fold": [0, 1, 2]},
                       "parameters": {"run_name": f"{name}_fold{{fold}}",
                                      "splits_dir": f"splits_{name}", **BASE_TRAIN}}],
            "search": {"space": SPACE, "n_trials": 4, "folds": [0],
                       "trial": {"iters": 20, "val_interval": 10},
                       "sampler": {"type": "tpe", "seed": 0}, **search}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


BASE_TRAIN = {"image_size": 96, "crop_size": 64, "iters": 40, "val_interval": 20,
              "log_interval": 10, "warmup_iters": 5, "vis_images": 0}


def test_search_spec_winner_and_09_search(sample_root, tmp_path):
    """A spec's study (stand-in training), its winner written back as a spec that checks as a
    pipeline, and 09_search showing the finished study."""
    from segkit.flow.pipeline import plan_pipeline
    from segkit.flow.studies import load_search
    from tests.conftest import notebook_text, run_notebook

    spec = write_spec(tmp_path / "nb09.yaml", sample_root, "nb09")
    search = load_search(spec)
    assert search.train_step == 2 and [s.name for s in search.prepare] == ["02_split"]
    assert search.study.trial_parameters(1, 0, {"lr": 0.01})["iters"] == 20  # trial: wins
    search.study.work(fake_train, log=lambda _: None)
    nb = run_notebook("09_search", tmp_path, spec=str(spec), run_search=False, top=2)
    assert not (search.study.folder / "prepared.json").exists()  # only shown, not run
    text = notebook_text(nb)
    assert "COMPLETE" in text and "trial" in text
    winner = search.study.folder / "winner.yaml"
    planned = plan_pipeline(winner)
    _, values = search.study.winner()
    trains = [p for n, p, _ in planned if n == "04_train"]
    assert len(trains) == 3 and all(p["lr"] == values["lr"] for p in trains)
    assert all(p["iters"] == 40 for p in trains)  # the spec's own schedule, not the trials'
    assert "search" not in winner.read_text().split("# Run as is")[1]


def test_worker_command_carries_the_overrides_exactly(sample_root, tmp_path):
    from segkit.flow.cli import parse_assignments
    from segkit.flow.studies import load_search, worker_command

    overrides = {"data_root": str(sample_root), "seed": 7}
    search = load_search(write_spec(tmp_path / "w.yaml", sample_root, "w"), overrides)
    command = worker_command(search)
    given = command[command.index(str(search.path)) + 1:command.index("--worker")]
    assert parse_assignments(given) == overrides
    assert command[command.index("--storage") + 1] == search.study.storage


def test_search_command_without_the_extra_names_it(sample_root, tmp_path, monkeypatch, capsys):
    from segkit.flow.cli import main

    spec = write_spec(tmp_path / "x.yaml", sample_root, "noextra")
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` fails
    assert main(["search", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "segkit[search]" in err[0]


def test_search_spec_errors_name_the_file(sample_root, tmp_path):
    from segkit.flow.studies import load_search

    spec = write_spec(tmp_path / "bad.yaml", sample_root, "bad", folds=[7])
    with pytest.raises(ParameterError, match="folds \\[7\\]"):
        load_search(spec)
    spec = write_spec(tmp_path / "bad2.yaml", sample_root, "bad2",
                      space={"lr": {"log_uniform": [-1, 1]}})
    with pytest.raises(ParameterError, match="bad2.yaml: search space lr"):
        load_search(spec)


@pytest.mark.slow
def test_search_yaml_killed_and_resumed_with_real_notebooks(sample_root, tmp_path):
    """notebooks/search.yaml on the tiny sample, 3 trials of real 04_train notebooks: killed
    inside trial 1 (the worker's whole process group), then the same command with two workers:
    trial 1 continues from its checkpoint, 3 trials in all, the winner spec written."""
    from segkit.flow.studies import load_search

    spec = PROJECT_ROOT / "notebooks" / "search.yaml"
    command = [sys.executable, "-m", "segkit", "search", str(spec),
               f"data_root={sample_root}", "--n-trials", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    search = load_search(spec, {"data_root": str(sample_root)}, n_trials=3)
    first = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not list(search.study.run_dir(1, 0).glob("iter_*.pth")):
            assert time.time() < deadline and first.poll() is None, "trial 1 never started"
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert list(search.study.trials_table()["state"]) == ["COMPLETE", "RUNNING"]
    again = subprocess.run(command + ["--parallel", "2"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=900)  # two workers now
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trial 1: taken over" in again.stdout
    table = search.study.trials_table()
    assert list(table.index) == [0, 1, 2]
    assert set(table["state"]) <= {"COMPLETE", "PRUNED"}
    sessions = list(search.study.run_dir(1, 0).glob("*/vis_data/scalars.json"))
    assert len(sessions) == 2  # trained once, then resumed: not started over
    assert (search.study.folder / "winner.yaml").is_file()
