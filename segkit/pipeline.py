"""Run the numbered notebooks headlessly with papermill, one or a sequence of them.

Example:
    >>> run_notebook("notebooks/02_split.ipynb", "outputs/splits/02_split.ipynb",
    ...              {"n_splits": 5})                                   # doctest: +SKIP
"""

from __future__ import annotations

import os
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
    try:
        papermill.execute_notebook(
            str(source), str(output), parameters=parameters or {}, kernel_name="python3",
            cwd=str(source.parent), progress_bar=progress, log_output=False,
            execution_timeout=timeout)
    except PapermillExecutionError as exc:
        first_line = exc.source.strip().splitlines()[0] if exc.source.strip() else ""
        raise NotebookError(
            f"{source.name} failed in cell {exc.cell_index} ({first_line!r}): "
            f"{exc.ename}: {exc.evalue}; executed notebook: {output}") from None
    return output


DEFAULT_RUN = "efficientnet_lite0_fold0"  # what 04_train's defaults train


def default_run(run_dir: str | os.PathLike = "") -> Path:
    """A notebook's `run_dir` parameter: empty means 04_train's default run, which is trained
    (by executing 04_train with its defaults) if it is not there yet, so every notebook runs
    top to bottom on its own."""
    from segkit.train import last_checkpoint

    if run_dir:
        return Path(run_dir)
    path = outputs_dir() / "runs" / DEFAULT_RUN
    if last_checkpoint(path) is None:
        run_notebook("04_train", path / "04_train.ipynb", {})
    return path
