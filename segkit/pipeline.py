"""Run the numbered notebooks headlessly with papermill, one or a sequence of them.

Example:
    >>> run_notebook("notebooks/02_split.ipynb", "outputs/splits/02_split.ipynb",
    ...              {"n_splits": 5})                                   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from segkit.errors import SegkitError
from segkit.paths import PROJECT_ROOT, outputs_dir

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"


class NotebookError(SegkitError):
    """A notebook failed: names the notebook, the executed copy, and the failing cell."""


def notebook_path(name: str | os.PathLike) -> Path:
    """`"04_train"` or `"04_train.ipynb"` or a path -> the notebook's path."""
    path = Path(name)
    if path.suffix != ".ipynb":
        path = path.with_suffix(".ipynb")
    if not path.exists() and (NOTEBOOKS_DIR / path.name).exists():
        path = NOTEBOOKS_DIR / path.name
    if not path.exists():
        raise SegkitError(f"notebook {str(name)!r} not found (looked in {NOTEBOOKS_DIR})")
    return path


# Path parameters a user types relative to the shell they run in. The kernel runs in the
# notebooks folder, so a relative one that exists from here is made absolute first (one that
# does not is left for the notebook, which also looks under the project root and outputs/).
PATH_PARAMETERS = ("data_root", "run_dir", "run_dirs", "runs", "curve_runs", "error_run",
                   "split_dir", "splits_dir", "output_dir", "train_file", "val_file",
                   "extra_train_files", "load_from", "work_dir")


def _from_here(value):
    if isinstance(value, (list, tuple)):
        return [_from_here(v) for v in value]
    if isinstance(value, str) and value and not Path(value).is_absolute() and Path(value).exists():
        return str(Path(value).resolve())
    return value


def run_notebook(name: str | os.PathLike, output: str | os.PathLike,
                 parameters: dict | None = None, progress: bool = False,
                 timeout: int | None = None) -> Path:
    """Execute a notebook with papermill, injecting `parameters`, saving the executed copy.

    The kernel runs in the notebooks folder (as in JupyterLab). A failing cell raises a
    NotebookError naming the executed copy and the cell; the copy keeps the traceback.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = notebook_path(name)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if os.environ.get("SEGKIT_OUTPUTS"):
        # kernels run in the notebooks folder: a relative SEGKIT_OUTPUTS must mean the same
        # folder there as here
        os.environ["SEGKIT_OUTPUTS"] = str(Path(os.environ["SEGKIT_OUTPUTS"]).resolve())
    parameters = {k: _from_here(v) if k in PATH_PARAMETERS else v
                  for k, v in (parameters or {}).items()}
    try:
        papermill.execute_notebook(
            str(source), str(output), parameters=parameters, kernel_name="python3",
            cwd=str(source.parent), progress_bar=progress, log_output=False,
            execution_timeout=timeout)
    except PapermillExecutionError as exc:
        first_line = exc.source.strip().splitlines()[0] if exc.source.strip() else ""
        raise NotebookError(
            f"{source.name} failed in cell {exc.cell_index} ({first_line!r}): "
            f"{exc.ename}: {exc.evalue}; executed notebook: {output}") from None
    return output


def default_run(fold: int = 0, data_root: str | os.PathLike = ""):
    """04_train's default run of a fold, trained first (by executing 04_train with its
    defaults) when it is not there yet, so notebooks 05-07 run top to bottom on their own."""
    from segkit.runs import Run
    from segkit.train_parameters import BY_NAME

    path = outputs_dir() / "runs" / f"{BY_NAME['model'].default}_fold{fold}"
    if Run(path).last_checkpoint is None:
        print(f"no run given: training {path} with 04_train's defaults ...")
        run_notebook("04_train", path / "04_train.ipynb",
                     {"fold": fold, "data_root": os.fspath(data_root)})
    return Run(path)


def runs_or_default(runs: str | os.PathLike | Sequence[str | os.PathLike] | None,
                    fold: int = 0, data_root: str | os.PathLike = "",
                    search: bool = False) -> list:
    """The runs a notebook parameter names (one folder or name, or a list). Empty means every
    run validated on `fold` when `search` (07), and 04_train's default run of the fold when
    there is none (trained first if absent)."""
    from segkit.runs import Run, find_runs

    if isinstance(runs, (str, os.PathLike)):
        runs = [runs] if os.fspath(runs) else []
    opened = [Run.open(r) for r in runs or []]
    if not opened and search:
        opened = find_runs(fold=fold)
    return opened or [default_run(fold, data_root)]


DEMO_SPEC = NOTEBOOKS_DIR / "demo.yaml"


def load_spec(path: str | os.PathLike) -> dict:
    """A pipeline spec: `name`, shared `parameters`, and `steps` (notebook, output, parameters).

    Example spec:
        name: demo
        parameters: {data_root: ""}          # given to every step whose notebook declares it
        steps:
          - notebook: 02_split
          - notebook: 04_train
            parameters: {fold: 0, iters: 400}
            output: runs/efficientnet_lite0_fold0/04_train.ipynb   # under outputs/
    """
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SegkitError(f"{path}: pipeline spec not found") from None
    except yaml.YAMLError as exc:
        raise SegkitError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("steps"), list) or not spec["steps"]:
        raise SegkitError(f"{path}: a spec needs a non-empty 'steps' list")
    for i, step in enumerate(spec["steps"]):
        if not isinstance(step, dict) or "notebook" not in step:
            raise SegkitError(f"{path}: step {i + 1} needs a 'notebook'")
        notebook_path(step["notebook"])  # fails early on a misspelt notebook
        unknown = set(step) - {"notebook", "output", "parameters"}
        if unknown:
            raise SegkitError(f"{path}: step {i + 1} has unknown keys {sorted(unknown)}")
    spec.setdefault("name", path.stem)
    return spec


def notebook_defaults(notebook: str | os.PathLike) -> dict:
    """{name: default} of the names a notebook's `parameters` cell assigns, in order (read with
    Python's own parser: papermill's inspection misreads lines like `x = ""  # "" = default`);
    a default that is not a literal is left as None."""
    import ast

    import nbformat

    path = notebook_path(notebook)
    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise SegkitError(f"{path}: no cell tagged 'parameters'")
    found: dict = {}
    for node in ast.parse(cells[0].source).body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Name) and target.id not in found:
                try:
                    found[target.id] = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError):
                    found[target.id] = None
    return found


def notebook_parameters(notebook: str | os.PathLike) -> list[str]:
    """The names a notebook's `parameters` cell assigns, in order."""
    return list(notebook_defaults(notebook))


def plan_pipeline(spec_path: str | os.PathLike, overrides: dict | None = None
                  ) -> list[tuple[str, dict, Path]]:
    """A spec's steps as (notebook, parameters, executed copy), every step checked against the
    parameters its notebook declares: a typo in the last step fails before the first one runs.

    Example:
        >>> [name for name, _, _ in plan_pipeline("notebooks/demo.yaml")][:2]  # doctest: +SKIP
        ['01_eda', '02_split']
    """
    return _plan(load_spec(spec_path), spec_path, overrides)


def _plan(spec: dict, spec_path, overrides: dict | None) -> list[tuple[str, dict, Path]]:
    shared = {**(spec.get("parameters") or {}), **(overrides or {})}
    out_root = outputs_dir()
    plan = []
    for i, step in enumerate(spec["steps"], 1):
        name = Path(step["notebook"]).stem
        declared = set(notebook_parameters(name))
        params = {k: v for k, v in shared.items() if k in declared}
        params.update(step.get("parameters") or {})
        unknown = set(params) - declared
        if unknown:
            raise SegkitError(f"{spec_path}: step {i} ({name}) sets {sorted(unknown)}, which "
                              f"the notebook does not declare ({', '.join(sorted(declared))})")
        output = out_root / step["output"] if step.get("output") else \
            out_root / "pipelines" / spec["name"] / f"{name}.ipynb"
        plan.append((name, params, output))
    return plan


def run_pipeline(spec_path: str | os.PathLike, overrides: dict | None = None,
                 progress: bool = True) -> list[Path]:
    """Run a spec's notebooks in order (checked first, see `plan_pipeline`); stops at the first
    failure (NotebookError naming the step, the notebook, its failing cell and the executed
    copy). Returns the executed copies.

    `overrides` replace shared parameters (e.g. data_root) for every step that declares them.
    """
    from tqdm.auto import tqdm

    spec = load_spec(spec_path)
    plan = _plan(spec, spec_path, overrides)
    executed = []
    bar = tqdm(plan, desc=spec["name"], disable=not progress)
    for i, (name, params, output) in enumerate(bar, 1):
        bar.set_postfix_str(name)
        try:
            executed.append(run_notebook(name, output, params))
        except NotebookError as exc:
            raise NotebookError(f"step {i} of {spec_path}: {exc}") from None
    return executed


def run_demo(spec_path: str | os.PathLike = DEMO_SPEC) -> dict:
    """The demo: every numbered notebook on the embedded sample; prints where things are."""
    import time

    from segkit.report import runs_table

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
                     "validation mIoU (best checkpoint of each run):",
                     *[f"  {k}: {v}" for k, v in summary["validation mIoU"].items()]]))
    return summary
