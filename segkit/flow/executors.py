"""Where the notebooks of a fanned-out pipeline step run: here one after another (`inline`), as
local processes several at once (`local`: submitit's LocalExecutor, one GPU each), or as Slurm
jobs (`slurm`: submitit's SlurmExecutor, a job array with GPUs, partition and time limit).

Each notebook runs as a `NotebookJob`. A 04_train job whose run folder already holds a
checkpoint made with the same training parameters passes `resume=True`, so a killed, timed-out
or preempted fold continues from its last checkpoint when it is run again (by hand, or by
submitit's requeue: `NotebookJob.checkpoint`). A run folder holding another run's checkpoints
is left to 04_train, which refuses it.

Example:
    jobs = [NotebookJob("04_train", {"fold": k, "run_name": f"lite0_fold{k}"},
                        f"outputs/runs/lite0_fold{k}/04_train.ipynb") for k in range(3)]
    run_jobs(jobs, "local", parallel=2, folder="outputs/pipelines/cv/jobs")
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from segkit.core.errors import ParameterError, SegkitError

EXECUTORS = ("inline", "local", "slurm")
# the spec's `executor:` section and the command line's --partition ... (cluster jobs)
EXECUTOR_OPTIONS = {
    "partition": (str, None, "Slurm partition (default: the cluster's)"),
    "gpus_per_job": (int, 1, "GPUs of each job"),
    "cpus_per_job": (int, 8, "CPU cores of each job"),
    "time": (int, 24 * 60, "time limit of each job in minutes (local jobs too)"),
    "mem_gb": (int, None, "memory of each job in GB (default: the cluster's)"),
    "slurm": (dict, None, "more sbatch options, e.g. {account: me, qos: high}"),
}
# training parameters that do not change what a run learns: a run may resume with other values
NOT_PART_OF_THE_RUN = ("resume", "num_workers", "launcher", "wandb")


def check_executor_options(options: dict | None, where: str) -> dict:
    """The executor options with their defaults; an unknown key or a wrong type is a
    ParameterError naming `where` (the spec's file, or the command line)."""
    checked = {k: default for k, (_, default, _) in EXECUTOR_OPTIONS.items()}
    for key, value in (options or {}).items():
        if key not in EXECUTOR_OPTIONS:
            raise ParameterError(f"{where}: unknown executor option {key!r}; allowed: "
                                 f"{', '.join(EXECUTOR_OPTIONS)}")
        kind = EXECUTOR_OPTIONS[key][0]
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) or
                                  (kind is int and value < 1)):
            raise ParameterError(f"{where}: executor option {key}={value!r}: expected "
                                 f"{'a positive integer' if kind is int else kind.__name__}")
        checked[key] = value
    return checked


def training_run_dir(params: dict) -> Path:
    """The run folder a 04_train call with these parameters trains into."""
    from segkit.core.paths import outputs_dir, resolve_output_path
    from segkit.recipe.parameters import check_training_parameters

    p = check_training_parameters(params)
    if p["work_dir"]:
        return resolve_output_path(p["work_dir"])
    from segkit.train.training import default_run_name

    return outputs_dir() / "runs" / (p["run_name"] or default_run_name(p))


def _comparable(params: dict) -> dict:
    from segkit.recipe.parameters import check_training_parameters

    checked = json.loads(json.dumps(check_training_parameters(params), default=str))
    return {k: v for k, v in checked.items() if k not in NOT_PART_OF_THE_RUN}


def resume_parameters(notebook: str, params: dict) -> dict:
    """`params`, with resume=True when the notebook is 04_train and its run folder already
    holds a checkpoint of a run with the same training parameters (a killed run)."""
    from segkit.results.runs import Run

    if Path(notebook).stem != "04_train" or params.get("resume"):
        return params
    run = Run(training_run_dir(params))
    if run.last_checkpoint is None:
        return params
    try:
        same = _comparable(run.parameters) == _comparable(params)
    except SegkitError:
        return params  # 04_train names the problem
    return {**params, "resume": True} if same else params


@dataclass
class NotebookJob:
    """One notebook execution, picklable for submitit. `environment`: variables set in the
    job's process before the kernel starts (None: removed), e.g. CUDA_VISIBLE_DEVICES."""

    notebook: str
    parameters: dict
    output: str | os.PathLike
    label: str = ""
    environment: dict = field(default_factory=dict)
    kernel: str = "python3"

    def __call__(self) -> str:
        from segkit.flow.notebook import run_notebook

        for key, value in self.environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = str(value)
        params = resume_parameters(self.notebook, self.parameters)
        return str(run_notebook(self.notebook, self.output, params, kernel=self.kernel))

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on preemption or time-out: the same job again, which resumes
        from the run's last checkpoint (see resume_parameters)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def available_gpus() -> list[str]:
    """The GPUs the jobs may use: CUDA_VISIBLE_DEVICES's entries when set, else every GPU
    torch sees ([] on a CPU machine)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    try:
        import torch

        return [str(k) for k in range(torch.cuda.device_count())]
    except ImportError:
        return []


def default_parallel(executor: str) -> int | None:
    """--parallel's default: one notebook per GPU here (1 on a CPU machine); Slurm: no limit."""
    return None if executor == "slurm" else max(1, len(available_gpus()))


def slurm_parameters(options: dict, parallel: int | None, name: str) -> dict:
    """submitit's SlurmExecutor parameters (sbatch's names) from the executor options."""
    params = dict(job_name=name, gpus_per_node=options["gpus_per_job"],
                  cpus_per_task=options["cpus_per_job"], time=options["time"], nodes=1,
                  ntasks_per_node=1)
    if options["partition"]:
        params["partition"] = options["partition"]
    if options["mem_gb"]:
        params["mem"] = f"{options['mem_gb']}GB"
    if options["slurm"]:
        params["additional_parameters"] = dict(options["slurm"])
    if parallel:
        params["array_parallelism"] = parallel
    return params


def run_jobs(jobs: list[NotebookJob], executor: str = "inline", parallel: int | None = None,
             folder: str | os.PathLike = "", options: dict | None = None,
             name: str = "segkit") -> list[Path]:
    """Run the jobs and wait for all of them; returns the executed notebooks in job order. A
    failed job does not stop the others: a NotebookError lists every failure at the end."""
    from segkit.core.checks import check_choice

    check_choice("executor", executor, EXECUTORS)
    options = check_executor_options(options, "executor options")
    if parallel is not None and (not isinstance(parallel, int) or parallel < 1):
        raise ParameterError(f"parallel must be a positive integer, got {parallel!r}")
    if executor == "inline":
        return [Path(job()) for job in jobs]
    folder = Path(folder or ".") / "%j"
    if executor == "slurm":
        import submitit

        slurm = submitit.SlurmExecutor(folder=folder)
        slurm.update_parameters(**slurm_parameters(options, parallel, name))
        with slurm.batch():
            submitted = [slurm.submit(job) for job in jobs]
        return _collect(jobs, submitted)
    return _run_local(jobs, parallel or default_parallel("local"), folder, options)


def _run_local(jobs: list[NotebookJob], parallel: int, folder: Path, options: dict
               ) -> list[Path]:
    """At most `parallel` jobs at once, each pinned to a GPU of its own (round robin over the
    GPUs when there are fewer than `parallel`), as processes of submitit's LocalExecutor."""
    import submitit

    local = submitit.LocalExecutor(folder=folder)
    local.update_parameters(timeout_min=options["time"])
    gpus = available_gpus()
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    # jobs share the CPU cores rather than each taking them all (torch's default)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // parallel))
    waiting = list(range(len(jobs)))
    running: dict[int, tuple[int, object]] = {}  # slot -> (job index, submitit job)
    submitted: list = [None] * len(jobs)
    while waiting or running:
        for slot in range(parallel):
            if slot not in running and waiting:
                k = waiting.pop(0)
                # the LocalExecutor hides every GPU unless told; the job sets its own
                jobs[k].environment["CUDA_VISIBLE_DEVICES"] = \
                    gpus[slot % len(gpus)] if gpus else inherited
                jobs[k].environment.setdefault("OMP_NUM_THREADS", threads)
                running[slot] = (k, local.submit(jobs[k]))
                submitted[k] = running[slot][1]
        time.sleep(0.5)
        for slot, (_, job) in list(running.items()):
            if job.done():
                del running[slot]
    return _collect(jobs, submitted)


def _collect(jobs: list[NotebookJob], submitted: list) -> list[Path]:
    from segkit.flow.notebook import NotebookError

    results, failures = [], []
    for job, handle in zip(jobs, submitted, strict=True):
        try:
            results.append(Path(handle.result()))
        except Exception as exc:  # noqa: BLE001 - submitit re-raises the job's error as text
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            reason = next((line for line in reversed(lines) if "NotebookError" in line),
                          lines[-1] if lines else type(exc).__name__)
            failures.append(f"{job.label or job.notebook}: {reason.strip()} (job log: "
                            f"{handle.paths.stderr})")
    if failures:
        raise NotebookError(f"{len(failures)} of {len(jobs)} jobs failed: " + "; ".join(failures))
    return results
