"""Running notebooks: their declared parameters, pipeline specs, executors (inline, parallel
processes, Slurm through submitit), default runs, pseudo-label round 2, and the CLI.
"""

from segkit.flow.cli import (
    build_parser,
    main,
    parse_assignments,
    predict_options,
)
from segkit.flow.default_runs import (
    default_run,
    runs_or_default,
)
from segkit.flow.executors import (
    EXECUTOR_OPTIONS,
    EXECUTORS,
    NOT_PART_OF_THE_RUN,
    NotebookJob,
    available_gpus,
    check_executor_options,
    default_parallel,
    resume_parameters,
    run_jobs,
    slurm_parameters,
    training_run_dir,
)
from segkit.flow.notebook import (
    NOTEBOOKS_DIR,
    PATH_PARAMETERS,
    NotebookError,
    check_parameters,
    from_here,
    notebook_defaults,
    notebook_parameters,
    notebook_path,
    run_notebook,
)
from segkit.flow.pipeline import (
    DEMO_SPEC,
    SPEC_KEYS,
    STEP_KEYS,
    PlannedStep,
    fill_template,
    load_spec,
    plan_pipeline,
    run_demo,
    run_pipeline,
)
from segkit.flow.round2 import (
    ROUND2_STARTS,
    check_round2_start,
    round2_parameters,
    train_round2,
)

__all__ = [
    "runs_or_default",
    "default_run",
    "EXECUTORS",
    "EXECUTOR_OPTIONS",
    "NOT_PART_OF_THE_RUN",
    "check_executor_options",
    "training_run_dir",
    "resume_parameters",
    "NotebookJob",
    "available_gpus",
    "default_parallel",
    "slurm_parameters",
    "run_jobs",
    "NOTEBOOKS_DIR",
    "NotebookError",
    "notebook_path",
    "PATH_PARAMETERS",
    "from_here",
    "run_notebook",
    "notebook_defaults",
    "notebook_parameters",
    "check_parameters",
    "DEMO_SPEC",
    "STEP_KEYS",
    "SPEC_KEYS",
    "load_spec",
    "plan_pipeline",
    "PlannedStep",
    "fill_template",
    "run_pipeline",
    "run_demo",
    "ROUND2_STARTS",
    "check_round2_start",
    "round2_parameters",
    "train_round2",
    "parse_assignments",
    "predict_options",
    "build_parser",
    "main",
]
