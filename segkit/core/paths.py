"""Where segkit writes: `outputs/` of the checkout (or $SEGKIT_OUTPUTS), and atomic writes."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def outputs_dir() -> Path:
    """The outputs folder: $SEGKIT_OUTPUTS, else `outputs/` beside the package (an editable
    install), else `./outputs`. Notebooks run from `notebooks/` still write to one place."""
    env = os.environ.get("SEGKIT_OUTPUTS")
    if env:
        return Path(env)
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / "outputs"
    return Path.cwd() / "outputs"


@functools.lru_cache(maxsize=1)  # read once: setting it to read it races with other threads
def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds,
    so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield an empty temporary folder beside `path`; when the block succeeds it replaces
    `path` (an older `path` is removed only once the new one is in place), when it fails it is
    removed. Readers see the old folder or the new one, never a half-written one.

    Example:
        with atomic_folder("outputs/pseudo/t09") as building:
            (building / "meta.json").write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield building
        os.chmod(building, 0o777 & ~_umask())  # mkdtemp's folder is private (0700)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(building, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(building, path)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def resolve_output_path(path: str | os.PathLike) -> Path:
    """A path as a user wrote it: as given when it exists from here (or is absolute), else the
    same relative path from the project root (notebooks run in notebooks/, where the README's
    `outputs/runs/NAME` means the project's) or under the outputs folder (specs name runs and
    files relative to outputs/); as given when it is in none of them."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    for base in (PROJECT_ROOT, outputs_dir()):
        if (base / path).exists():
            return base / path
    return path


def read_json_file(path: str | os.PathLike, missing: str) -> dict:
    """A small JSON file of segkit's own (params.json, meta.json, ...): a missing file raises
    SegkitError(`missing`), a malformed one a SegkitError naming the file."""
    import json

    from segkit.core.errors import SegkitError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SegkitError(missing) from None
    except ValueError as exc:
        raise SegkitError(f"{path}: not valid JSON ({exc})") from None


def write_table(df, path: str | os.PathLike) -> Path:
    """Write a table as CSV atomically (same table, same bytes)."""
    path = Path(path)
    write_text_atomic(path, df.to_csv(lineterminator="\n", float_format="%.6g"))
    return path
