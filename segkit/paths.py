"""Where segkit writes: `outputs/` of the checkout (or $SEGKIT_OUTPUTS), and atomic writes."""

from __future__ import annotations

import functools
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


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


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def resolve_output_path(path: str | os.PathLike) -> Path:
    """A path as a user wrote it, or, when it is relative and not there, the same path under
    the outputs folder (pipeline specs name runs and files relative to outputs/)."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (outputs_dir() / path).exists():
        return outputs_dir() / path
    return path


def read_json_file(path: str | os.PathLike, missing: str) -> dict:
    """A small JSON file of segkit's own (params.json, meta.json, ...): a missing file raises
    SegkitError(`missing`), a malformed one a SegkitError naming the file."""
    import json

    from segkit.errors import SegkitError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SegkitError(missing) from None
    except ValueError as exc:
        raise SegkitError(f"{path}: not valid JSON ({exc})") from None
