"""A recipe search over the CV loop: an Optuna study whose trials are training runs.

A spec's `search:` section (read by `parse_search`) declares the space (segkit.search.space),
the number of trials, the folds each trial trains, the objective and the pruner:

    search:
      n_trials: 12
      folds: [1]                 # each trial trains these folds (default: the step's first)
      objective: val_miou        # the folds' mean best validation mIoU | oof_miou (segkit oof)
      trial: {iters: 400, val_interval: 100}   # fixed for the trials only (short runs)
      pruner: {type: hyperband, min_resource: 100, reduction_factor: 3}
      sampler: {type: tpe, seed: 0, n_startup_trials: 4}
      timeout: 45                # minutes: no new trial starts after it (per command)
      space: {lr: {log_uniform: [0.0005, 0.01]}, loss: {choice: [ce, "ce+dice"]}}

`SearchStudy.work` is one worker: it takes the next trial, trains its folds with the given
`train(params, environment)` (segkit.flow runs 04_train with papermill), and tells the study the
objective. Each trial's runs land in `outputs/search/<name>/runs/<name>_t0003_fold1/`; the study
in `outputs/search/<name>/journal.log` (Optuna's JournalStorage, file backend: several
processes, and machines sharing the folder over NFS) or any storage URL.

Pruning: the training reports every validation's mIoU to the trial (segkit.train.hooks.
TrialPruningHook, linked by SEGKIT_TRIAL: segkit.core.trials); when the pruner (Hyperband,
successive halving, median) prunes it, training stops after that validation and the trial is
told PRUNED. A trial's later folds report after its earlier ones (step offset: the folds'
iterations before it).

Kills and several workers: a worker takes a trial under a lock file in the study folder and
records itself (host, pid, heartbeat) as the trial's owner. A trial left RUNNING by a worker
that is gone (killed: its pid is dead on this host, or its heartbeat older than `stale_s`
elsewhere) is taken over by the next worker: a training process still left from it is stopped,
its runs continue from their last checkpoints (`resume=True`), a run that had finished is not
trained again, and the trial keeps its number and parameters. So a search killed part-way and
started again loses no trial and runs none twice; the study's `n_trials` counts every trial
ever started (finished, pruned, failed or running).

Example:
    study = SearchStudy("demo", parse_search(section, "search.yaml", base), {0: params})
    study.work(train)          # train(params, environment): one run
    study.trials_table()
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import outputs_dir, write_text_atomic
from segkit.core.trials import (
    import_optuna,
    is_storage_url,
    process_alive,
    process_identity,
    trial_environment,
)
from segkit.recipe.parameters import check_training_parameters
from segkit.search.search_options import SearchOptions, default_storage
from segkit.search.space import searched_names, suggest, values_of

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


class Pruned(Exception):
    """Raised inside a trial when its training stopped on the pruner's word."""


@dataclass
class SearchStudy:
    """One study: its name, checked options, the 04_train parameters of each fold before the
    trial's values (`base`: fold -> parameters), and where it is stored (`storage`: a journal
    file or a URL; default outputs/search/<name>/journal.log)."""

    name: str
    options: SearchOptions
    base: dict
    storage: str = ""
    heartbeat_s: float = 30.0
    stale_s: float = 300.0

    def __post_init__(self):
        if not self.storage:
            self.storage = str(default_storage(self.name).resolve())
        elif not is_storage_url(self.storage):
            self.storage = str(Path(self.storage).resolve())
        self.folds = list(self.options.folds or [next(iter(self.base))])
        missing = [f for f in self.folds if f not in self.base]
        if missing:
            raise ParameterError(f"search {self.name}: folds {missing} are not trained by the "
                                 f"spec's step (its folds: {list(self.base)})")

    # --- where things are -----------------------------------------------------------------

    @property
    def folder(self) -> Path:
        return outputs_dir() / "search" / self.name

    def run_dir(self, number: int, fold) -> Path:
        fold = "x" if fold is None else fold
        return (self.folder / "runs" / f"{self.name}_t{number:04d}_fold{fold}").resolve()

    def trial_parameters(self, number: int, fold, values: dict) -> dict:
        """The 04_train parameters of a trial's fold: the spec's, the search's fixed trial
        parameters, the trial's values, and its run folder."""
        params = {**self.base[fold], **self.options.trial, **values}
        params.pop("run_name", None)
        params["work_dir"] = str(self.run_dir(number, fold))
        return params

    def _owner_file(self, number: int) -> Path:
        return self.folder / "trials" / f"t{number:04d}.json"

    # --- Optuna ---------------------------------------------------------------------------

    def _base_parameters(self) -> dict:
        return check_training_parameters({**self.base[self.folds[0]], **self.options.trial})

    def pruner_spec(self) -> dict:
        """The pruner's type and options with their defaults filled in: the first validation
        as the smallest resource, the trial's iterations (over its folds) as the largest."""
        spec = dict(self.options.pruner)
        kind = spec["type"]
        searched = searched_names(self.options.space)
        p = self._base_parameters()
        if kind in ("hyperband", "successive_halving"):
            spec.setdefault("min_resource", "auto" if "val_interval" in searched
                            else min(p["val_interval"], p["iters"]))
            spec.setdefault("reduction_factor", 3)
        if kind == "hyperband":
            spec.setdefault("max_resource", "auto" if searched & {"iters", "epochs"} or
                            p["epochs"] else p["iters"] * len(self.folds))
        return spec

    def pruner(self):
        from segkit.core.trials import make_pruner

        return make_pruner(self.pruner_spec())

    def sampler(self, offset: int = 0):
        """The sampler, seeded with the spec's seed plus `offset` (the trials so far): workers
        asking at once draw differently, and the same history draws the same."""
        optuna = import_optuna()
        spec = dict(self.options.sampler)
        kind = spec.pop("type")
        seed = spec.pop("seed", 0)
        seed = None if seed is None else int(seed) + offset
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        spec.setdefault("n_startup_trials", max(2, min(10, self.options.n_trials // 3)))
        return optuna.samplers.TPESampler(seed=seed, **spec)

    def open(self):
        """The Optuna study (created on first use), maximising the objective."""
        optuna = import_optuna()
        from segkit.core.trials import open_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=self.name, storage=open_storage(self.storage),
                                    direction="maximize", pruner=self.pruner(),
                                    sampler=self.sampler(), load_if_exists=True)
        if "space" not in study.user_attrs:
            study.set_user_attr("space", [d.describe() for d in self.options.space])
            study.set_user_attr("objective", self.options.objective)
            study.set_user_attr("folds", self.folds)
        return study

    @contextmanager
    def _lock(self):
        """One worker at a time takes or adopts a trial (an O_EXCL lock file: NFS-safe; one
        left by a killed worker is broken after two minutes)."""
        from optuna.storages.journal import JournalFileOpenLock

        self.folder.mkdir(parents=True, exist_ok=True)
        lock = JournalFileOpenLock(str(self.folder / "study"), grace_period=120)
        lock.acquire()
        try:
            yield
        finally:
            lock.release()

    # --- owners ---------------------------------------------------------------------------

    def _write_owner(self, number: int, worker: str) -> None:
        write_text_atomic(self._owner_file(number), json.dumps(
            {**process_identity(), "worker": worker, "time": time.time()}))

    def _owner_gone(self, number: int) -> bool:
        try:
            owner = json.loads(self._owner_file(number).read_text())
        except (OSError, ValueError):
            return True  # asked but never claimed: its worker died inside the lock
        alive = process_alive(owner)
        if alive is None:
            return time.time() - float(owner.get("time", 0)) > self.stale_s
        return not alive

    def _stop_left_training(self, number: int) -> None:
        """Stop a training process of the trial that outlived its worker (a kernel left
        running), so the trial's runs continue in one process only."""
        for fold in self.folds:
            try:
                record = json.loads((self.run_dir(number, fold) /
                                     "trial_process.json").read_text())
            except (OSError, ValueError):
                continue
            if not process_alive(record):
                continue
            pid = int(record["pid"])
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                end = time.time() + wait
                while time.time() < end and process_alive(record):
                    time.sleep(0.2)
                if not process_alive(record):
                    break

    @contextmanager
    def _heartbeat(self, number: int, worker: str):
        stop = threading.Event()

        def beat():
            while not stop.wait(self.heartbeat_s):
                try:
                    self._write_owner(number, worker)
                except OSError:
                    pass

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    # --- the worker -----------------------------------------------------------------------

    def _take(self, study, worker: str, deadline: float | None, log):
        """(trial number, values, adopted) of the next trial to run, or None when the study
        has its trials (or the deadline passed)."""
        from optuna.trial import TrialState

        if deadline is not None and time.time() > deadline:
            return None
        with self._lock():
            trials = study.get_trials(deepcopy=False)
            for t in trials:
                if t.state != TrialState.RUNNING or not self._owner_gone(t.number):
                    continue
                if set(t.params) != {d.name for d in self.options.space}:
                    study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                    log(f"trial {t.number}: its worker died while sampling it; marked failed")
                    continue
                self._stop_left_training(t.number)
                self._write_owner(t.number, worker)
                log(f"trial {t.number}: taken over from a worker that is gone; its runs "
                    "continue from their last checkpoints")
                return t.number, values_of(t.params, self.options.space), True
            if len(trials) >= self.options.n_trials:
                return None
            study.sampler = self.sampler(len(trials))
            trial = study.ask()
            try:
                values = suggest(trial, self.options.space)
            except BaseException:
                study.tell(trial.number, state=TrialState.FAIL)
                raise
            trial.set_user_attr("values", _jsonable(values))
            self._write_owner(trial.number, worker)
            return trial.number, values, False

    def work(self, train: Callable[[dict, dict], object], worker: str = "",
             log: Callable[[str], object] = print, max_failures: int = 3) -> list[int]:
        """Run trials until the study has its `n_trials` (or the spec's timeout passes):
        `train(params, environment)` trains one run (environment: variables the training
        process needs, SEGKIT_TRIAL). Returns the numbers of the trials this worker ran. A
        KeyboardInterrupt leaves its trial RUNNING for the next worker to take over."""
        optuna = import_optuna()
        from optuna.trial import TrialState

        study = self.open()
        deadline = time.time() + self.options.timeout * 60 if self.options.timeout else None
        ran, failures = [], 0
        while True:
            job = self._take(study, worker, deadline, log)
            if job is None:
                break
            number, values, adopted = job
            trial = optuna.trial.Trial(study, study._storage.get_trial_id_from_study_id_trial_number(
                study._study_id, number))  # the trial's attributes, also when taken over
            shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
            log(f"trial {number}{' (resumed)' if adopted else ''}: {shown}")
            start = time.time()
            with self._heartbeat(number, worker):
                try:
                    runs, value = self._run(number, values, train)
                    state, error = TrialState.COMPLETE, ""
                except Pruned as exc:
                    runs, value, state, error = exc.args[0], None, TrialState.PRUNED, ""
                except (SegkitError, RuntimeError, OSError, ValueError) as exc:
                    runs = [self.run_dir(number, fold) for fold in self.folds]
                    value, state, error = None, TrialState.FAIL, f"{type(exc).__name__}: {exc}"
            seconds = time.time() - start + float(trial.user_attrs.get("seconds", 0.0))
            trial.set_user_attr("seconds", round(seconds, 1))
            if runs:
                trial.set_user_attr("runs", [str(r) for r in runs])
            if error:
                trial.set_user_attr("error", error[:2000])
            study.tell(number, value, state=state, skip_if_finished=True)
            self._owner_file(number).unlink(missing_ok=True)
            ran.append(number)
            outcome = f"{value:.4f}" if state == TrialState.COMPLETE else state.name.lower()
            log(f"trial {number}: {outcome} ({seconds:.0f} s){'; ' + error if error else ''}")
            failures = failures + 1 if state == TrialState.FAIL else 0
            if failures >= max_failures:
                raise SegkitError(f"search {self.name}: {failures} trials failed in a row; the "
                                  f"last: {error}")
        return ran

    def _run(self, number: int, values: dict, train) -> tuple[list[Path], float]:
        """Train the trial's folds (those already finished are not trained again); returns
        (run folders, objective). Raises Pruned when the pruner stopped one."""
        from segkit.results.runs import Run

        runs, offset = [], 0
        for fold in self.folds:
            params = check_training_parameters(self.trial_parameters(number, fold, values))
            run_dir = Path(params["work_dir"])
            runs.append(run_dir)
            if not (run_dir / "pruned.json").exists() and \
                    not (run_dir / "summary.json").exists():
                given = self.trial_parameters(number, fold, values)
                if Run(run_dir).last_checkpoint is not None:
                    given["resume"] = True
                train(given, trial_environment(self.storage, self.name, number, offset,
                                               self.pruner_spec()))
            if (run_dir / "pruned.json").exists():
                raise Pruned(runs)
            offset += params["iters"]
        return runs, self.objective(runs)

    def objective(self, runs: list[Path]) -> float:
        """The trial's score: the folds' mean best validation mIoU (val_miou), or their
        out-of-fold mIoU (oof_miou: segkit.predict.cv, every fold's validation images
        predicted by its best checkpoint, no TTA)."""
        from segkit.results.runs import Run

        if self.options.objective == "oof_miou":
            from segkit.predict.cv import out_of_fold
            from segkit.predict.options import PredictOptions

            value = out_of_fold([Run(r) for r in runs], PredictOptions(flips=()),
                                name=f"{Path(runs[0]).name.rsplit('_fold', 1)[0]}_oof").miou
        else:
            value = sum(Run(r).summary().best_miou for r in runs) / len(runs)
        if not math.isfinite(value):
            raise SegkitError(f"{runs[0]}: no validation mIoU recorded")
        return float(value)

    # --- results --------------------------------------------------------------------------

    def trials_table(self, study=None) -> pd.DataFrame:
        """One row per trial: number, state, value, the trial's training values, seconds, the
        step it was pruned at, its runs and any error."""
        study = study or self.open()
        rows = []
        for t in study.get_trials(deepcopy=False):
            values = values_of(t.params, self.options.space)
            steps = sorted(t.intermediate_values)
            rows.append({"trial": t.number, "state": t.state.name, "value": t.value,
                         **{k: _short(v) for k, v in values.items()},
                         "last_step": steps[-1] if steps else None,
                         "seconds": t.user_attrs.get("seconds"),
                         "runs": t.user_attrs.get("runs", []),
                         "error": t.user_attrs.get("error", "")})
        return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()

    def best_trials(self, study=None, top: int = 3) -> list:
        """The `top` completed trials, best first."""
        from optuna.trial import TrialState

        study = study or self.open()
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        return sorted(done, key=lambda t: (-t.value, t.number))[:top]

    def per_class(self, trials) -> pd.DataFrame:
        """Per-class IoU of trials side by side (one column per trial, the mean over its folds'
        best validations)."""
        from segkit.results.runs import Run

        columns = {}
        for t in trials:
            tables = [Run(r).summary().per_class_iou for r in t.user_attrs.get("runs", [])]
            if tables:
                columns[f"trial {t.number} ({t.value:.3f})"] = pd.concat(tables, axis=1).mean(
                    axis=1)
        return pd.DataFrame(columns)

    def winner(self, study=None) -> tuple[int, dict]:
        """(number, training values) of the best completed trial."""
        best = self.best_trials(study, top=1)
        if not best:
            raise SegkitError(f"search {self.name}: no completed trial yet")
        return best[0].number, values_of(best[0].params, self.options.space)


def _short(value):
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, (list, dict)):
        from segkit.search.space import label_of

        return label_of(value)
    return value


def _jsonable(values: dict) -> dict:
    return json.loads(json.dumps(values, default=str))
