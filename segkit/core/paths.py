"""Where segkit writes: `outputs/` of the checkout (or $SEGKIT_OUTPUTS), and atomic writes."""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from segkit.core.errors import ParameterError, SegkitError

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


def output_error(path: str | os.PathLike, exc: OSError) -> SegkitError:
    """One SegkitError naming the output `path` that could not be written, and why (a file
    where a folder is needed, a read-only or full folder)."""
    path = Path(path)
    where = f" ({exc.filename})" if exc.filename and os.fspath(exc.filename) != str(path) \
        else ""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()),
                       None)
        reason, where = (f"{blocker} is a file, not a folder", "") if blocker else \
            ("a file stands where a folder is needed", where)
    elif isinstance(exc, PermissionError):
        reason = "permission denied (a read-only folder?)"
    else:
        reason = exc.strerror or str(exc)
    outputs = outputs_dir().absolute()
    hint = f" (the outputs folder {outputs}: SEGKIT_OUTPUTS moves it)" if \
        path.absolute().is_relative_to(outputs) else ""
    return SegkitError(f"cannot write {path}: {reason}{where}; choose a writable place{hint}")


def make_folder(path: str | os.PathLike) -> Path:
    """`mkdir -p path`: an OSError (a file in the way, a read-only or full disk) becomes one
    SegkitError naming the folder (`output_error`)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from None
    return path


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from None


@functools.lru_cache(maxsize=1)
def _host_tag() -> str:
    import socket
    import zlib

    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _owner_tag() -> str:
    """`p<pid>@<host>`: which process made a temporary file or folder, in its name, so that a
    later writer can tell the leftovers of a killed one (`remove_leftovers`)."""
    return f"p{os.getpid()}@{_host_tag()}"


_LEFTOVER = re.compile(r"\..+?\.(?:old\.)?p(\d+)@([0-9a-f]{8})\.[^/]*")
_SWEPT: set = set()  # folders this process has swept (one scan each, not one per write)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True  # another user's process, or cannot tell: keep its files
    return True


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders (`.NAME.p<pid>@<host>.*`, made by
    `atomic_path` / `atomic_folder`) that a killed writer left in `folder`: only those made
    on this machine by a process that no longer exists, so a writer running at the same
    time (alive) or on another machine keeps its own. Each folder is swept once per process.
    Returns what was removed."""
    folder = Path(folder)
    key = os.path.abspath(folder)
    if key in _SWEPT:
        return []
    _SWEPT.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = _LEFTOVER.fullmatch(entry.name)
        if not match or match.group(2) != _host_tag() or _alive(int(match.group(1))):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass  # another writer removed it first, or it is not ours to remove
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds,
    so a reader never sees a half-written file."""
    path = Path(path)
    _make_parent(path)
    remove_leftovers(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp",
                                   dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise output_error(path, exc) from None
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
    _make_parent(path)
    remove_leftovers(path.parent)
    if path.exists() and not path.is_dir():
        raise SegkitError(f"cannot write the folder {path}: a file of that name is in the way")
    try:
        building = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner_tag()}.",
                                         dir=path.parent))
    except OSError as exc:
        raise output_error(path, exc) from None
    try:
        yield building
        os.chmod(building, 0o777 & ~_umask())  # mkdtemp's folder is private (0700)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.{_owner_tag()}.",
                                        dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(building, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(building, path)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


_SHA256: dict = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (hex); computed once per process while the file's inode,
    size and modification time stay the same. An absent file raises FileNotFoundError."""
    import hashlib

    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def distinct_paths(paths, what: str = "inputs") -> list[Path]:
    """The paths resolved to what they point at (symlinks, `..`, trailing slashes); one file
    or folder given twice (`A`, `/abs/A/`, `A/../A`) is a ParameterError naming both
    spellings.

    Example:
        >>> distinct_paths(["/tmp", "/tmp/../tmp/"])
        Traceback (most recent call last):
        ...
        segkit.core.errors.ParameterError: inputs: /tmp and /tmp/../tmp/ are the same (/tmp); give each once
    """
    seen: dict[Path, str] = {}
    for path in paths:
        real = Path(path).resolve()
        if real in seen:
            raise ParameterError(f"{what}: {seen[real]} and {path} are the same ({real}); give "
                                 "each once")
        seen[real] = os.fspath(path)
    return list(seen)


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
