"""A fold set on disk: `fold{k}_train.json` / `fold{k}_val.json` and `folds.csv`, found, named
and written atomically.

The fold files are subsets of the input COCO file (original image ids, file names and
annotation order kept; file names stay relative to the input's data root); `folds.csv` lists
image_id, file_name, fold; `split.json` how the set was made (source file and its sha256,
seed, stratification, group rule, each fold file's sha256). The set is built in a temporary sibling folder and swapped into
place under a lock, so two concurrent writers never mix their folds and a failed write
(read-only or full disk) leaves the previous set as it was.

Example:
    write_folds(coco, folds, "outputs/splits")
    train_file, val_file = fold_files("outputs/splits", 0)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.coco.files import Coco, subset, write_coco
from segkit.core.errors import ParameterError
from segkit.core.paths import _umask, file_sha256

FOLD_FILE = re.compile(r"fold(\d+)_(train|val)\.json$")
SPLIT_FILE = "split.json"


def available_folds(split_dir: str | os.PathLike) -> list[int]:
    """Fold indices that have both a train and a val file in `split_dir`."""
    found: dict[int, set] = {}
    folder = Path(split_dir)
    if folder.is_dir():
        for path in folder.iterdir():
            match = FOLD_FILE.fullmatch(path.name)
            if match:
                found.setdefault(int(match.group(1)), set()).add(match.group(2))
    return sorted(k for k, kinds in found.items() if kinds == {"train", "val"})


def fold_files(split_dir: str | os.PathLike, fold: int) -> tuple[Path, Path]:
    """(train, val) files of one fold; an absent folder or an out-of-range fold raises a
    ParameterError listing the folds there are.

    Example:
        train_file, val_file = fold_files("outputs/splits", 0)
    """
    folds = available_folds(split_dir)
    if not folds:
        raise ParameterError(f"no fold files (fold{{k}}_train.json / fold{{k}}_val.json) in "
                             f"{split_dir}: run notebooks/02_split.ipynb or "
                             f"`python -m segkit split` first")
    if not isinstance(fold, (int, np.integer)) or isinstance(fold, bool) or fold not in folds:
        raise ParameterError(f"fold {fold!r} is out of range; allowed: "
                             f"{', '.join(map(str, folds))} (in {split_dir})")
    folder = Path(split_dir)
    return folder / f"fold{fold}_train.json", folder / f"fold{fold}_val.json"


def write_folds(coco: Coco, folds: pd.Series, out_dir: str | os.PathLike,
                settings: dict | None = None) -> list[Path]:
    """Write fold{k}_train.json, fold{k}_val.json (k = 0..n-1), folds.csv and split.json into
    `out_dir`.

    split.json records how the set was made: the source file (resolved path, sha256), its
    image count, n_splits, `settings` (the seed, `by`, `group_by` that made `folds`; absent
    when not given) and the sha256 of every fold file, so a run trained on a fold can name
    the split it needs (`segkit.results.runs`).

    Returns the paths written. Validation happens before the first file is written. The set is
    written atomically: built in a temporary sibling folder, then swapped with `out_dir` under
    a lock (`.<name>.lock` beside it), so `out_dir` always holds one whole split, also with
    two writers at once. Other files in `out_dir` (reports, figures) are kept; fold files of
    an earlier split with more folds are not. A folder that cannot be written (read-only,
    full) raises one SegkitError naming it, and leaves the previous set as it was.
    """
    out_dir = Path(out_dir)
    ids = [img["id"] for img in coco.images]
    if set(folds.index) != set(ids) or len(folds) != len(ids):
        raise ParameterError(f"folds must give one fold to each of the {len(ids)} images of "
                             f"{coco.path}")
    n_splits = int(folds.max()) + 1
    if int(folds.min()) < 0 or sorted(set(folds)) != list(range(n_splits)):
        raise ParameterError(f"folds must use every fold 0..{n_splits - 1}, got {sorted(set(folds))}")
    documents = []
    for k in range(n_splits):
        val_ids = [i for i in ids if folds[i] == k]
        train_ids = [i for i in ids if folds[i] != k]
        documents.append((f"fold{k}_train.json", subset(coco, train_ids)))
        documents.append((f"fold{k}_val.json", subset(coco, val_ids)))
    table = pd.DataFrame({"image_id": ids,
                          "file_name": [coco.image_by_id[i]["file_name"] for i in ids],
                          "fold": [int(folds[i]) for i in ids]})
    csv_text = table.to_csv(index=False, lineterminator="\n")
    source = Path(coco.path).resolve() if coco.path else None
    info = {"source": str(source) if source else None,
            "source_sha256": file_sha256(source) if source and source.is_file() else None,
            "images": len(ids), "n_splits": n_splits, **(settings or {})}

    def build(folder: Path) -> None:
        for name, data in documents:
            write_coco(data, folder / name)
        (folder / "folds.csv").write_text(csv_text, encoding="utf-8")
        hashes = {name: file_sha256(folder / name) for name, _ in documents}
        (folder / SPLIT_FILE).write_text(json.dumps({**info, "files": hashes}, indent=1) + "\n",
                                         encoding="utf-8")

    _replace_folder(out_dir, build)
    return [out_dir / name for name, _ in documents] + [out_dir / "folds.csv",
                                                        out_dir / SPLIT_FILE]


def read_split_info(split_dir: str | os.PathLike) -> dict | None:
    """split.json of a fold set (see `write_folds`), or None when the folder has none (a set
    written before it was recorded, or fold files made by hand); a malformed one is a
    SegkitError naming it."""
    from segkit.core.errors import SegkitError

    path = Path(split_dir) / SPLIT_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SegkitError(f"{path}: unreadable split record ({exc})") from None
    if not isinstance(info, dict):
        raise SegkitError(f"{path}: unreadable split record (not a JSON object)")
    return info


def split_size(split_dir: str | os.PathLike) -> tuple[int, int] | None:
    """(folds, images) of the fold set in `split_dir`: from split.json, else folds.csv; None
    when the folder has neither (files that are not a fold set of segkit's)."""
    info = read_split_info(split_dir)
    if info and info.get("n_splits") and info.get("images"):
        return int(info["n_splits"]), int(info["images"])
    path = Path(split_dir) / "folds.csv"
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path)
        return int(table["fold"].max()) + 1, len(table)
    except (OSError, ValueError, KeyError):
        return None


def split_command(info: dict, out_dir: str | os.PathLike) -> str | None:
    """The `segkit split` command that writes the fold set `info` (split.json) records into
    `out_dir` again, or None when it does not record the seed."""
    if not info.get("source") or info.get("seed") is None:
        return None
    words = ["segkit split", str(info["source"]), f"--n-splits {info.get('n_splits')}",
             f"--seed {info['seed']}", f"--by {info.get('by') or 'annotations'}"]
    if info.get("group_by"):
        words.append(f"--group-by '{info['group_by']}'")
    return " ".join(words + [f"--out {out_dir}"])


def _is_fold_set_file(name: str) -> bool:
    return bool(FOLD_FILE.fullmatch(name)) or name in ("folds.csv", SPLIT_FILE)


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive lock on `folder`'s fold set: a `.<name>.lock` file beside it (flock)."""
    import fcntl

    lock_path = folder.parent / f".{folder.name}.lock"
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _replace_folder(out_dir: Path, build) -> None:
    """Run `build(tmp)` on a temporary sibling of `out_dir`, then put it in `out_dir`'s place
    (keeping `out_dir`'s files that are not part of a fold set); any OSError becomes one
    SegkitError and nothing of the new set is left behind."""
    from segkit.core.errors import SegkitError

    tmp = None
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise SegkitError(f"cannot write the folds to {out_dir}: it is a file, not a folder")
        if out_dir.is_dir() and not os.access(out_dir, os.W_OK):
            raise SegkitError(f"cannot write the folds to {out_dir}: the folder is read-only")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with _folder_lock(out_dir):
            _remove_killed_builds(out_dir)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp",
                                        dir=out_dir.parent))
            os.chmod(tmp, 0o777 & ~_umask())
            build(tmp)
            if out_dir.is_dir():
                for entry in sorted(out_dir.iterdir()):
                    if not _is_fold_set_file(entry.name):
                        _link_tree(entry, tmp / entry.name)
                if not _exchange(tmp, out_dir):
                    old = out_dir.parent / f"{tmp.name}.old"
                    os.rename(out_dir, old)
                    os.rename(tmp, out_dir)
                    tmp = old
            else:
                os.rename(tmp, out_dir)
                tmp = None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SegkitError(f"cannot write the folds to {out_dir}: {reason}"
                          f"{f' ({exc.filename})' if exc.filename else ''}; the folder was "
                          f"left as it was") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_killed_builds(out_dir: Path) -> list[Path]:
    """Remove the temporary sets (`.<name>.XXXXXXXX.tmp`, `....tmp.old`) that a killed split
    left beside `out_dir`. Called under the folder's lock, which every writer holds from
    making its temporary set to removing it: any such folder found then is a dead writer's."""
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.[a-z0-9_]{{8}}\.tmp(\.old)?")
    removed = []
    for entry in out_dir.parent.iterdir():
        if pattern.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (or copy) a file or folder tree to `target`."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        return dst

    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, copy_function=link, symlinks=True)
    elif source.is_symlink():
        os.symlink(os.readlink(source), target)
    else:
        link(source, target)


