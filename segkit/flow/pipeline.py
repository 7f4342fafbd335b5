"""Run the numbered notebooks headlessly with papermill, one or a sequence of them (a spec).

A spec step may fan out over parameter values (`foreach: {fold: [0, 1, 2]}`; several keys: every
combination): one notebook per item, where `{fold}` in the step's text values and `output`
stands for the item's value (`run_name: "lite0_fold{fold}"`); in every step `{outputs}` stands
for the outputs folder (`annotation_file: "{outputs}/splits/fold2_train.json"`); other braces
stay as they are. A fanned-out 04_train saves each
executed notebook in its run folder (outputs/runs/<run>/04_train.ipynb), others in
outputs/pipelines/<spec>/<notebook>_fold1.ipynb. The items run here one after another, or
several at once as processes or Slurm jobs (segkit.flow.executors). Each executed notebook
gets a self-contained HTML report beside it (segkit.flow.reports), and outputs/index.html is
rewritten after every step (segkit.flow.index).

Example:
    run_notebook("notebooks/02_split.ipynb", "outputs/splits/02_split.ipynb",
                 {"n_splits": 5})
    run_pipeline("notebooks/cv.yaml", parallel=2)
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from segkit.core.errors import SegkitError
from segkit.core.paths import outputs_dir
from segkit.flow.notebook import (
    NOTEBOOKS_DIR,
    PATH_PARAMETERS,
    NotebookError,
    from_here,
    notebook_parameters,
    notebook_path,
    run_notebook,
)

DEMO_SPEC = NOTEBOOKS_DIR / "demo.yaml"


STEP_KEYS = ("notebook", "output", "parameters", "foreach")
SPEC_KEYS = ("name", "parameters", "steps", "executor", "search")  # search: segkit.flow.studies


def load_spec(path: str | os.PathLike) -> dict:
    """A pipeline spec: `name`, shared `parameters`, `steps` (notebook, output, parameters,
    foreach) and the cluster's `executor` options (segkit.flow.executors.EXECUTOR_OPTIONS).

    Example spec:
        name: demo
        parameters: {data_root: ""}          # given to every step whose notebook declares it
        steps:
          - notebook: 02_split
          - notebook: 04_train
            parameters: {fold: 0, iters: 400}
            output: runs/efficientnet_lite0_fold0/04_train.ipynb   # under outputs/
          - notebook: 04_train               # one notebook per fold: a sweep
            foreach: {fold: [0, 1, 2]}       # several keys: every combination
            parameters: {run_name: "lite0_fold{fold}"}   # {fold}: the item's value
    """
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SegkitError(f"{path}: pipeline spec not found") from None
    except IsADirectoryError:
        raise SegkitError(f"{path}: a folder, not a pipeline spec (a YAML file, e.g. "
                          "notebooks/demo.yaml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SegkitError(f"{path}: cannot read the pipeline spec ({reason})") from None
    except yaml.YAMLError as exc:
        raise SegkitError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("steps"), list) or not spec["steps"]:
        raise SegkitError(f"{path}: a spec needs a non-empty 'steps' list")
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise SegkitError(f"{path}: unknown keys {sorted(unknown)}; a spec has "
                          f"{', '.join(SPEC_KEYS)}")
    for key in ("parameters", "executor"):
        if not isinstance(spec.get(key) or {}, dict):
            raise SegkitError(f"{path}: '{key}' must be a mapping of names to values")
    for i, step in enumerate(spec["steps"]):
        if not isinstance(step, dict) or "notebook" not in step:
            raise SegkitError(f"{path}: step {i + 1} needs a 'notebook'")
        notebook_path(step["notebook"])  # fails early on a misspelt notebook
        unknown = set(step) - set(STEP_KEYS)
        if unknown:
            raise SegkitError(f"{path}: step {i + 1} has unknown keys {sorted(unknown)}")
        if not isinstance(step.get("parameters") or {}, dict):
            raise SegkitError(f"{path}: step {i + 1}'s parameters must be a mapping")
        foreach = step.get("foreach")
        if foreach is not None and (not isinstance(foreach, dict) or not foreach or not all(
                isinstance(v, list) and v for v in foreach.values())):
            raise SegkitError(f"{path}: step {i + 1}'s foreach must map parameter names to "
                              "non-empty lists, e.g. foreach: {fold: [0, 1, 2]}")
    spec.setdefault("name", path.stem)
    return spec
def plan_pipeline(spec_path: str | os.PathLike, overrides: dict | None = None
                  ) -> list[tuple[str, dict, Path]]:
    """A spec's notebooks as (notebook, parameters, executed copy), one per item of a fanned-out
    step, every one checked against the parameters its notebook declares (and 04_train's
    against the training parameters) before anything runs: a typo in the last step fails
    before the first one runs, and a shared parameter or override that no step's notebook
    declares (a misspelt `data_rot=...`) is refused.

    Example:
        [name for name, _, _ in plan_pipeline("notebooks/demo.yaml")][:2]
    """
    return [(step.name, params, output)
            for step in _plan(load_spec(spec_path), spec_path, overrides)
            for params, output, _ in step.items]


@dataclass
class PlannedStep:
    """One step of a spec, checked: its notebook and one (parameters, executed copy, label)
    per item; a step without `foreach` has one item, a fanned-out step one per combination
    of its values (label e.g. "fold=1")."""

    index: int
    name: str
    items: list[tuple[dict, Path, str]]
    fanned: bool = False


_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_UNSAFE = re.compile(r"[^\w.-]+")


def fill_template(value, values: dict):
    """`{key}` in text (also inside lists and mappings) replaced by values[key], for the keys
    of `values` only: other braces (a regex's `\\w{2}`) stay as they are. A whole-text
    placeholder keeps the value's type (`"{fold}"` -> 1)."""
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole and whole.group(1) in values:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values
                                else m.group(0), value)
    if isinstance(value, list):
        return [fill_template(v, values) for v in value]
    if isinstance(value, dict):
        return {k: fill_template(v, values) for k, v in value.items()}
    return value


_NAMED_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")  # {fold}, not a regex's {2}


def _texts(value, key: str):
    """(parameter, text) of every text inside a parameter value (lists and mappings too)."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, list):
        for v in value:
            yield from _texts(v, key)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _texts(v, f"{key}.{k}")


def _refuse_unfilled(where: str, params: dict, output, values: dict) -> None:
    """A SegkitError naming the step and the placeholder when a `{name}` is left after the
    step's foreach values and `{outputs}` were filled in: without a foreach to fill it, a
    `{fold}` would reach the notebook (or a folder name) literally."""
    filled = {"outputs", *values}
    texts = [*((k, v) for k, value in params.items() for k, v in _texts(value, k)),
             *([("output", fill_template(output, values))] if isinstance(output, str) else [])]
    for key, text in texts:
        left = [m for m in _NAMED_PLACEHOLDER.findall(text) if m not in filled]
        if left:
            fill = f"foreach: {{{left[0]}: [...]}}"
            raise SegkitError(f"{where}: {key}={text!r} holds the placeholder {{{left[0]}}}, "
                              f"which nothing fills: give the step {fill} (its values fill "
                              f"it), or write the value itself")


def _combinations(foreach: dict | None) -> list[dict]:
    if not foreach:
        return [{}]
    keys = list(foreach)
    return [dict(zip(keys, combo)) for combo in itertools.product(*foreach.values())]


def _label(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _default_output(spec: dict, name: str, params: dict, values: dict) -> Path:
    if name == "04_train" and values:
        from segkit.flow.executors import training_run_dir

        return training_run_dir(params) / "04_train.ipynb"
    suffix = "".join(f"_{k}{_UNSAFE.sub('-', str(v))}" for k, v in values.items())
    return outputs_dir() / "pipelines" / spec["name"] / f"{name}{suffix}.ipynb"


def _plan_item(spec, spec_path, i, name, declared, shared, step, values):
    where = f"{spec_path}: step {i} ({name}{', ' + _label(values) if values else ''})"
    params = {k: v for k, v in shared.items() if k in declared}
    params.update(step.get("parameters") or {})
    clash = set(values) & set(step.get("parameters") or {})
    if clash:
        raise SegkitError(f"{where}: {sorted(clash)} set both in foreach and in parameters")
    # `{outputs}`: the outputs folder, in any step (a file an earlier step wrote)
    params = fill_template({**params, **values}, {"outputs": str(outputs_dir().resolve()),
                                                         **values})
    _refuse_unfilled(where, params, step.get("output"), values)
    unknown = set(params) - declared
    if unknown:
        raise SegkitError(f"{where} sets {sorted(unknown)}, which the notebook does not "
                          f"declare ({', '.join(sorted(declared))})")
    if name == "04_train":
        from segkit.recipe.parameters import check_training_parameters

        try:
            check_training_parameters(params)
        except SegkitError as exc:
            raise SegkitError(f"{where}: {exc}") from None
    output = outputs_dir() / fill_template(step["output"], values) if step.get("output") \
        else _default_output(spec, name, params, values)
    return params, Path(output), _label(values)


def _plan(spec: dict, spec_path, overrides: dict | None) -> list[PlannedStep]:
    shared = {**(spec.get("parameters") or {}), **(overrides or {})}
    steps, declared_anywhere, run_dirs = [], set(), {}
    for i, step in enumerate(spec["steps"], 1):
        name = Path(step["notebook"]).stem
        declared = set(notebook_parameters(name))
        declared_anywhere |= declared
        items = [_plan_item(spec, spec_path, i, name, declared, shared, step, values)
                 for values in _combinations(step.get("foreach"))]
        outputs = [output for _, output, _ in items]
        if len(set(outputs)) < len(outputs):
            raise SegkitError(f"{spec_path}: step {i} ({name}) writes {len(outputs)} notebooks "
                              f"to {len(set(outputs))} places: put the foreach keys in its "
                              "output or run_name, e.g. run_name: 'lite0_fold{fold}'")
        if name == "04_train":
            from segkit.flow.executors import training_run_dir

            for params, _, label in items:
                folder = training_run_dir(params)
                if folder in run_dirs:
                    raise SegkitError(f"{spec_path}: step {i} ({label or name}) trains into "
                                      f"{folder}, as step {run_dirs[folder]} does: give each "
                                      "a run_name of its own")
                run_dirs[folder] = i
        steps.append(PlannedStep(i, name, items, bool(step.get("foreach"))))
    unused = sorted(set(shared) - declared_anywhere)
    if unused:
        raise SegkitError(f"{spec_path}: {', '.join(f'{k}={shared[k]!r}' for k in unused)}: no "
                          "step's notebook declares "
                          f"{'it' if len(unused) == 1 else 'them'} (a misspelt parameter?)")
    return steps


def run_pipeline(spec_path: str | os.PathLike, overrides: dict | None = None,
                 progress: bool = True, kernel: str = "python3", parallel: int | None = None,
                 executor: str | None = None, executor_options: dict | None = None
                 ) -> list[Path]:
    """Run a spec's notebooks in order (checked first, see `plan_pipeline`); stops at the first
    failed step (NotebookError naming the step, the notebook, its failing cell and the
    executed copy). Returns the executed copies.

    `overrides` replace shared parameters (e.g. data_root) for every step that declares them.
    A fanned-out step's notebooks run on `executor` (segkit.flow.executors: inline, local, slurm;
    default inline, or local when `parallel` > 1), at most `parallel` at once (default: one
    per GPU, 1 on a CPU machine), with the spec's `executor:` options updated by
    `executor_options`; the next step starts when all of them are done. A 04_train item
    whose run folder holds a checkpoint of the same parameters resumes it.
    """
    import time

    from tqdm import tqdm

    from segkit.flow.executors import (
        NotebookJob,
        check_executor_options,
        default_parallel,
        resume_parameters,
        run_jobs,
    )
    from segkit.flow.index import write_pipeline_reports

    spec = load_spec(spec_path)
    steps = _plan(spec, spec_path, overrides)
    options = check_executor_options({**(spec.get("executor") or {}),
                                      **(executor_options or {})}, str(spec_path))
    executor = executor or ("inline" if (parallel or default_parallel("local")) == 1
                            else "local")
    if executor == "inline" and parallel not in (None, 1):
        raise SegkitError(f"parallel={parallel} needs executor local or slurm")
    executed = []
    bar = tqdm(steps, desc=spec["name"], disable=not progress)
    for step in bar:
        bar.set_postfix_str(step.name)
        started = time.time()
        try:
            if not step.fanned:
                params, output, _ = step.items[0]
                executed.append(run_notebook(step.name, output,
                                             resume_parameters(step.name, params),
                                             kernel=kernel))
                continue
            jobs = [NotebookJob(step.name, {k: from_here(v) if k in PATH_PARAMETERS else v
                                            for k, v in params.items()}, output, label,
                                {"SEGKIT_OUTPUTS": str(outputs_dir().resolve())}, kernel)
                    for params, output, label in step.items]
            executed += run_jobs(jobs, executor, parallel, outputs_dir() / "pipelines" /
                                 spec["name"] / "jobs", options,
                                 name=f"{spec['name']}-{step.index}-{step.name}")
        except NotebookError as exc:
            raise NotebookError(f"step {step.index} of {spec_path}: {exc}") from None
        finally:  # HTML reports beside the executed notebooks (failed too), outputs/index.html
            write_pipeline_reports([output for _, output, _ in step.items], started)
    return executed


def run_demo(spec_path: str | os.PathLike = DEMO_SPEC) -> dict:
    """The demo: every numbered notebook on the embedded sample; prints where things are."""
    import time

    from segkit.results.report import runs_table

    start = time.time()
    executed = run_pipeline(spec_path)
    table = runs_table()
    out = outputs_dir()
    summary = {
        "executed notebooks": [str(p) for p in executed],
        "submission": sorted(str(p) for p in (out / "predictions").glob("*/test/submission.csv")),
        "ensembles": sorted(str(p) for p in (out / "ensembles").glob("*.csv")),
        "report": str(executed[-1]),
        "validation mIoU": {r["run"]: round(float(r["best_mIoU"]), 4)
                            for _, r in table.iterrows()},
        "minutes": round((time.time() - start) / 60, 1),
    }
    print("\n".join(["", "segkit demo finished in {} min".format(summary["minutes"]),
                     "executed notebooks:", *[f"  {p}" for p in summary["executed notebooks"]],
                     "submissions:", *[f"  {p}" for p in summary["submission"]],
                     "ensembles:", *[f"  {p}" for p in summary["ensembles"]],
                     f"report: {summary['report']}",
                     f"every result, with HTML reports: {out / 'index.html'}",
                     "validation mIoU (best checkpoint of each run):",
                     *[f"  {k}: {v}" for k, v in summary["validation mIoU"].items()]]))
    return summary
