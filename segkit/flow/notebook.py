"""One notebook: where it is, the parameters its `parameters` cell declares, running it with
papermill (`run_notebook`), and what its first code cell calls (`check_parameters`): its
parameters checked as papermill delivered them.

papermill's `-p name value` passes a list or a dict as text (`-p scales "[0.75, 1.0]"` arrives as
the string "[0.75, 1.0]"), and a misspelt `-p n_split 3` only warns. `check_parameters` reads
such text as YAML where the notebook's default is a list, a dict or a number, and stops before
any work on a value that does not read as one, or on a name the notebook does not declare.

Example (the first code cell of 05_predict):
    check_parameters(globals(), "05_predict")
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import PROJECT_ROOT

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
                   "extra_train_files", "load_from", "work_dir", "iters_from", "decisions",
                   "images_dir")


def from_here(value):
    if isinstance(value, (list, tuple)):
        return [from_here(v) for v in value]
    if isinstance(value, str) and value and not Path(value).is_absolute() and Path(value).exists():
        return str(Path(value).resolve())
    return value


@functools.cache
def _socket_folder() -> str:
    """This process's folder for its kernels' sockets, removed when the process ends."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="segkit-kernels-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _local_socket_kernels():
    """A kernel manager whose kernels talk over local sockets (IPC): over TCP, ipykernel warns
    into the log of every executed notebook that the connection is not encrypted."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class LocalSocketKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

        @default("ip")
        def _default_ip(self):
            # each kernel its own socket names: jupyter_client numbers IPC sockets from 1 under
            # one name, so kernels started at once by several processes would share sockets
            import uuid

            return os.path.join(_socket_folder(), f"kernel-{uuid.uuid4().hex[:12]}")

    return LocalSocketKernelManager


def run_notebook(name: str | os.PathLike, output: str | os.PathLike,
                 parameters: dict | None = None, progress: bool = False,
                 timeout: int | None = None, kernel: str = "python3") -> Path:
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
    parameters = {k: from_here(v) if k in PATH_PARAMETERS else v
                  for k, v in (parameters or {}).items()}
    try:
        papermill.execute_notebook(
            str(source), str(output), parameters=parameters, kernel_name=kernel,
            kernel_manager_class=_local_socket_kernels(),
            cwd=str(source.parent), progress_bar=progress, log_output=False,
            execution_timeout=timeout)
    except PapermillExecutionError as exc:
        first_line = exc.source.strip().splitlines()[0] if exc.source.strip() else ""
        raise NotebookError(
            f"{source.name} failed in cell {exc.cell_index} ({first_line!r}): "
            f"{exc.ename}: {exc.evalue}; executed notebook: {output}") from None
    return output


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


# what IPython puts in a kernel's namespace before any cell runs
_KERNEL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def _read_text(name: str, value: str, default):
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    expected = list if isinstance(default, (list, tuple)) else dict \
        if isinstance(default, dict) else (int, float)
    if isinstance(parsed, expected) and not isinstance(parsed, bool):
        return parsed
    if default is None or parsed is None:  # "None" or "" for an optional value
        return parsed
    kind, example = ("a list", "[0.75, 1.0]") if expected is list else \
        ("a mapping", "{a: 1}") if expected is dict else ("a number", "3")
    raise ParameterError(f"{name}={value!r}: expected {kind} like its default {default!r}; "
                         f"with papermill pass it as YAML, e.g. -p {name} '{example}' or "
                         f"-y '{name}: {example}'")


def check_parameters(namespace: dict, notebook: str | os.PathLike) -> None:
    """Check the parameters in a notebook's namespace (its `globals()`) against its
    `parameters` cell, in place: text given for a list, dict or number parameter is read as
    YAML; a name papermill injected that the notebook does not declare is a ParameterError."""
    defaults = notebook_defaults(notebook)
    unknown = sorted(k for k, v in namespace.items()
                     if not k.startswith("_") and k not in defaults and k not in _KERNEL_NAMES
                     and isinstance(v, (str, int, float, bool, list, dict, type(None))))
    if unknown:
        raise ParameterError(f"{notebook} has no parameters {unknown}; it has: "
                             f"{', '.join(defaults)}")
    if Path(notebook).stem == "04_train":  # text of any kind (fold=all, ...): its own check
        from segkit.recipe.parameters import TRAINING_PARAMETERS

        defaults = {k: v for k, v in defaults.items()
                    if k not in {p.name for p in TRAINING_PARAMETERS if p.kind == "any"}}
    for name, default in defaults.items():
        value = namespace.get(name)
        wants_structure = isinstance(default, (list, tuple, dict)) or (
            isinstance(default, (int, float)) and not isinstance(default, bool))
        if isinstance(value, str) and (wants_structure or default is None):
            namespace[name] = _read_text(name, value, default)
