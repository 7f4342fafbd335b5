"""Search specs: a pipeline spec (segkit.flow.pipeline) with a `search:` section, run as an Optuna
study (segkit.search.study) whose trials are 04_train notebooks executed by papermill, and the
winner written back as a pipeline spec that cross-validation and the final model run as is.

The spec's steps are the recipe: the steps before its training step (02_split, ...) run once
per study; each trial trains the training step's folds (`search: folds`) with the step's
parameters, the search's fixed `trial:` parameters and the trial's values; the winner spec is
the spec without `search:`, with the winner's values in every 04_train step (and the command
line's overrides in its shared parameters): `segkit pipeline outputs/search/<name>/winner.yaml`.

Several workers (`parallel`) share one study: local processes (one GPU each where there are
GPUs, the CPU cores split between them), or Slurm jobs through submitit.

Example:
    result = run_search("notebooks/search.yaml", {"data_root": "/data/trash"}, parallel=2)
    result.winner_spec, result.table
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import write_text_atomic
from segkit.flow.notebook import PATH_PARAMETERS, from_here, run_notebook
from segkit.flow.pipeline import PlannedStep, _plan, load_spec


@dataclass
class SearchSpec:
    """A search spec, checked: the spec, the command line's overrides, the study, the steps
    that prepare the data (run once) and the training step the trials come from."""

    path: Path
    spec: dict
    overrides: dict
    study: object  # segkit.search.study.SearchStudy
    prepare: list[PlannedStep] = field(default_factory=list)
    train_step: int = 0


def load_search(spec_path: str | os.PathLike, overrides: dict | None = None,
                storage: str = "", n_trials: int | None = None) -> SearchSpec:
    """A search spec with every step's parameters and the search section checked before any
    work (a ParameterError names the spec and the entry)."""
    from segkit.recipe.parameters import check_training_parameters
    from segkit.search.search_options import parse_search
    from segkit.search.study import SearchStudy

    path = Path(spec_path)
    spec = load_spec(path)
    if not isinstance(spec.get("search"), dict):
        raise ParameterError(f"{path}: no 'search' section (a space over 04_train "
                             "parameters: docs/cross-validation.md#search)")
    overrides = dict(overrides or {})
    steps = _plan(spec, path, overrides)
    wanted = spec["search"].get("step")
    training = [s for s in steps if s.name == "04_train"]
    if wanted is not None:
        training = [s for s in steps if s.index == wanted and s.name == "04_train"]
    if not training:
        raise ParameterError(f"{path}: search needs a 04_train step"
                             + (f" at step {wanted}" if wanted is not None else ""))
    step = training[0]
    base: dict = {}
    for params, _, label in step.items:
        checked = check_training_parameters(params)
        fold = None if checked["train_file"] else checked["fold"]
        if fold in base:
            raise ParameterError(f"{path}: step {step.index} trains fold {fold} twice ({label}); "
                                 "the trials' step may fan out over folds only")
        base[fold] = {k: from_here(v) if k in PATH_PARAMETERS else v for k, v in params.items()}
    options = parse_search(spec["search"], str(path), next(iter(base.values())))
    if n_trials is not None:
        options.n_trials = n_trials
    study = SearchStudy(str(spec["name"]), options, base, storage=storage)
    return SearchSpec(path, spec, overrides, study,
                      [s for s in steps if s.index < step.index], step.index)


def papermill_train(kernel: str = "python3"):
    """A `train(params, environment)` for SearchStudy.work: 04_train executed by papermill into
    the run folder (`<work_dir>/04_train.ipynb`), the environment set for its kernel."""

    def train(params: dict, environment: dict) -> None:
        saved = {k: os.environ.get(k) for k in environment}
        os.environ.update(environment)
        try:
            run_notebook("04_train", Path(params["work_dir"]) / "04_train.ipynb", params,
                         kernel=kernel)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    return train


def prepare_study(search: SearchSpec, kernel: str = "python3", log=print) -> list[Path]:
    """Run the steps before the training step (02_split, ...) once per study: again only when
    their parameters changed."""
    if not search.prepare:
        return []
    done = search.study.folder / "prepared.json"
    planned = json.dumps([[s.name, [p for p, _, _ in s.items]] for s in search.prepare],
                         sort_keys=True, default=str)
    if done.exists() and done.read_text() == planned:
        return []
    executed = []
    for step in search.prepare:
        for params, output, _ in step.items:
            log(f"preparing: {step.name} -> {output}")
            executed.append(run_notebook(step.name, output, params, kernel=kernel))
    write_text_atomic(done, planned)
    return executed


@dataclass
class SearchResult:
    """What a search left: the study's trials table, the winner's trial number and spec, and
    the notebooks of the winner's pipeline when it ran (`final`)."""

    study: object
    table: object
    winner: int | None
    winner_spec: Path | None
    executed: list = field(default_factory=list)


def run_search(spec_path: str | os.PathLike, overrides: dict | None = None, storage: str = "",
               n_trials: int | None = None, parallel: int = 1, kernel: str = "python3",
               executor: str = "local", executor_options: dict | None = None,
               final: bool = False, log=print) -> SearchResult:
    """Prepare the data (once), run the study's trials with `parallel` workers (here when 1),
    write the winner spec, and with `final` run it (segkit.flow.pipeline.run_pipeline)."""
    from segkit.core.checks import check_choice

    check_choice("executor", executor, ("local", "slurm"))
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ParameterError(f"parallel must be a positive integer, got {parallel!r}")
    search = load_search(spec_path, overrides, storage, n_trials)
    study = search.study
    log(f"search {study.name}: {study.options.n_trials} trials of folds {study.folds}, "
        f"objective {study.options.objective}, pruner {study.options.pruner['type']}; "
        f"study in {study.storage}")
    prepare_study(search, kernel, log)
    if executor == "slurm":
        _slurm_workers(search, parallel, kernel, executor_options or {})
    elif parallel == 1:
        study.work(papermill_train(kernel), worker="w0", log=log)
    else:
        _local_workers(search, parallel, kernel)
    table = study.trials_table()
    winner = spec_file = None
    executed: list = []
    if len(table) and (table["state"] == "COMPLETE").any():
        winner, _ = study.winner()
        spec_file = write_winner(search)
        log(f"winner: trial {winner} ({table.loc[winner, 'value']:.4f}); its spec: {spec_file}")
        if final:
            from segkit.flow.pipeline import run_pipeline

            executed = run_pipeline(spec_file, kernel=kernel)
    return SearchResult(study, table, winner, spec_file, executed)


def worker_command(search: SearchSpec, kernel: str = "python3") -> list[str]:
    """The command line of one more worker of the same study (`segkit search --worker`)."""
    overrides = [f"{k}={json.dumps(v)}" for k, v in search.overrides.items()]  # YAML reads JSON
    return [sys.executable, "-m", "segkit", "search", str(search.path.resolve()), *overrides,
            "--worker", "--storage", search.study.storage, "--n-trials",
            str(search.study.options.n_trials), "--kernel", kernel]


def _local_workers(search: SearchSpec, parallel: int, kernel: str) -> None:
    """`parallel` worker processes at once, each on a GPU of its own (round robin) or, on a
    CPU machine, an equal share of the cores; waits for all."""
    from segkit.flow.executors import available_gpus

    gpus = available_gpus()
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // parallel))
    workers = []
    for k in range(parallel):
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)]
        command = worker_command(search, kernel) + ["--worker-name", f"w{k}"]
        workers.append(subprocess.Popen(command, env=env))
    try:
        codes = [w.wait() for w in workers]
    except BaseException:
        for w in workers:
            w.terminate()
        raise
    failed = [k for k, code in enumerate(codes) if code]
    if failed:
        raise SegkitError(f"search {search.study.name}: workers {failed} failed (exit codes "
                          f"{[codes[k] for k in failed]}); their trials are taken over when "
                          "the search runs again")


@dataclass
class SearchWorkerJob:
    """One worker as a Slurm job (picklable for submitit)."""

    spec: str
    overrides: dict
    storage: str
    n_trials: int
    kernel: str = "python3"

    def __call__(self) -> list[int]:
        search = load_search(self.spec, self.overrides, self.storage, self.n_trials)
        return search.study.work(papermill_train(self.kernel),
                                 worker=os.environ.get("SLURM_JOB_ID", "slurm"))

    def checkpoint(self, *args, **kwargs):
        """Requeued on preemption: the trial is taken over by this job again."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def _slurm_workers(search: SearchSpec, parallel: int, kernel: str, options: dict) -> None:
    import submitit

    from segkit.flow.executors import check_executor_options, slurm_parameters

    options = check_executor_options({**(search.spec.get("executor") or {}), **options},
                                     str(search.path))
    slurm = submitit.SlurmExecutor(folder=search.study.folder / "jobs" / "%j")
    slurm.update_parameters(**slurm_parameters(options, None, f"search-{search.study.name}"))
    job = SearchWorkerJob(str(search.path.resolve()), search.overrides, search.study.storage,
                          search.study.options.n_trials, kernel)
    with slurm.batch():
        handles = [slurm.submit(job) for _ in range(parallel)]
    for handle in handles:
        handle.result()


def winner_spec(search: SearchSpec, study=None) -> tuple[dict, str]:
    """(the winner spec, its header comment): the spec without `search:`, the command line's
    overrides in its shared parameters, the best trial's values in every 04_train step."""
    import yaml

    number, values = search.study.winner(study)
    raw = yaml.safe_load(search.path.read_text())
    raw.pop("search", None)
    raw["name"] = f"{raw.get('name', search.path.stem)}_winner"
    shared = dict(raw.get("parameters") or {})
    shared.update({k: from_here(v) if k in PATH_PARAMETERS else v
                   for k, v in search.overrides.items()})
    raw["parameters"] = shared
    for step in raw["steps"]:
        if Path(str(step["notebook"])).stem == "04_train":
            step["parameters"] = {**(step.get("parameters") or {}), **values}
    table = search.study.trials_table(study)
    header = (f"# The winner of search {search.study.name} ({search.path}): trial {number}, "
              f"{search.study.options.objective} {table.loc[number, 'value']:.4f} over folds "
              f"{search.study.folds}; written {datetime.date.today().isoformat()}.\n"
              f"# Its values: {json.dumps(values, default=str)}\n"
              f"# Run as is: python -m segkit pipeline <this file>\n")
    return raw, header


def write_winner(search: SearchSpec, path: str | os.PathLike | None = None, study=None) -> Path:
    """Write the winner spec (default outputs/search/<name>/winner.yaml), checked as a pipeline
    spec first."""
    import yaml

    raw, header = winner_spec(search, study)
    path = Path(path) if path else search.study.folder / "winner.yaml"
    text = header + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=100)
    write_text_atomic(path, text)
    try:
        _plan(load_spec(path), path, None)
    except SegkitError as exc:
        raise SegkitError(f"the winner spec {path} does not check: {exc}") from None
    return path


def find_spec(spec: str | os.PathLike) -> Path:
    """A spec as a user names it: as given from here, else under the project root, else in
    notebooks/ (09_search's kernel runs in notebooks/)."""
    from segkit.core.paths import PROJECT_ROOT
    from segkit.flow.notebook import NOTEBOOKS_DIR

    path = Path(spec)
    for candidate in (path, PROJECT_ROOT / path, NOTEBOOKS_DIR / path):
        if candidate.is_file():
            return candidate.resolve()
    raise SegkitError(f"{spec}: search spec not found (looked here, in {PROJECT_ROOT} and in "
                      f"{NOTEBOOKS_DIR})")
