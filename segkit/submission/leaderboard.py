"""Public-leaderboard scores beside the submissions they belong to, and the local (CV or
validation) score of each submission, so that the two can be compared (08_report).

`python -m segkit lb SUBMISSION SCORE [--note ...]` appends one JSON line to
outputs/leaderboard.jsonl (append-only: a later line never changes an earlier one): the time
(UTC), the submission's path, its sha256, the score and the note. The notebooks that write a
submission record its local score in `<submission>.score.json` beside it (the sha256 of the
bytes it scored, the score, what kind of score); `leaderboard_table` joins the two by sha256,
so a submission rewritten since it was uploaded shows no local score.

Example:
    record_score("outputs/ensembles/ensemble_oof.csv", 0.7256, note="5 folds")
    leaderboard_table()[["submission", "leaderboard", "local"]]
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import make_folder, output_error, outputs_dir, write_text_atomic
from segkit.submission.codec import HEADER


def leaderboard_file() -> Path:
    return outputs_dir() / "leaderboard.jsonl"


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_submission(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise SegkitError(f"{path}: no such submission file")
    with open(path, "rb") as f:
        first = f.readline(len(HEADER) + 2).decode("utf-8", "replace").strip()
    if first != HEADER:
        raise SegkitError(f"{path}: not a submission CSV (its first line is {first[:40]!r}, "
                          f"expected {HEADER!r})")
    return path.resolve()


def _check_score(score) -> float:
    try:
        value = float(score)
    except (TypeError, ValueError):
        raise ParameterError(f"score {score!r}: expected a number between 0 and 1") from None
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise ParameterError(f"score {score!r}: expected a number between 0 and 1 (mIoU)")
    return value


def record_score(submission: str | os.PathLike, score, note: str = "") -> dict:
    """Append a public-leaderboard score of a submission to outputs/leaderboard.jsonl."""
    path = _check_submission(submission)
    entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "submission": str(path), "sha256": sha256(path), "score": _check_score(score),
             "note": str(note)}
    target = leaderboard_file()
    make_folder(target.parent)
    line = (json.dumps(entry) + "\n").encode("utf-8")
    try:
        with open(target, "a+b") as f:  # one write of one line: O_APPEND
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # against another `lb` repairing the file
            try:
                _repair_last_line(f, target)
                previous = _last_entry(f)
                if previous and all(previous.get(k) == entry[k] for k in
                                    ("submission", "sha256", "score", "note")):
                    return previous  # recorded already (a rerun after a kill): once is enough
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError as exc:
        raise output_error(target, exc) from None
    return entry


def _last_entry(f) -> dict | None:
    """The last entry of the (repaired, locked) leaderboard file open in `f`, or None."""
    f.seek(0)
    lines = [line for line in f.read().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def _repair_last_line(f, path: Path) -> None:
    """Before an append (`f` open for appending, locked): a last line without its line break
    (a writer killed mid-line) would glue the new entry onto it. A whole entry gets its line
    break; a cut one is dropped, with a warning naming it. An unreadable line before the last
    is refused (a SegkitError naming the line), so the append never leaves a file that
    `read_scores` cannot read."""
    f.seek(0)
    data = f.read()
    if not data:
        return
    cut = b"" if data.endswith(b"\n") else data[data.rfind(b"\n") + 1:]
    whole = data[: len(data) - len(cut)]
    _check_lines(whole.decode("utf-8", "replace"), path)
    if not cut:
        return
    number = whole.count(b"\n") + 1
    try:
        _check_lines(cut.decode("utf-8"), path, first=number)
    except (SegkitError, UnicodeDecodeError):
        warnings.warn(f"{path}: dropped its last line (line {number}, cut short: "
                      f"{cut[:60].decode('utf-8', 'replace')!r}...), left by a write that was "
                      "cut off", stacklevel=3)
        f.truncate(len(whole))
    else:
        f.write(b"\n")  # a whole entry that only lacked its line break


def _check_lines(text: str, path: Path, first: int = 1) -> list[dict]:
    """The entries of leaderboard lines; a line that does not read is a SegkitError naming
    the file and the line."""
    entries = []
    for number, line in enumerate(text.splitlines(), first):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            _check_score(entry["score"])
            entry["submission"], entry["sha256"]
        except (ValueError, KeyError, TypeError):
            raise SegkitError(f"{path}: line {number} is not a leaderboard entry") from None
        entries.append(entry)
    return entries


def write_local_score(submission: str | os.PathLike, score: float, kind: str,
                      decisions: str | os.PathLike | None = None) -> Path:
    """`<submission>.score.json`: the local score of these very bytes (kind: e.g. "OOF mIoU",
    "validation mIoU (fold 0)"), and the decisions.json applied to them, if any."""
    path = _check_submission(submission)
    out = path.with_name(path.name + ".score.json")
    named = {"decisions": str(decisions)} if decisions else {}
    write_text_atomic(out, json.dumps({"sha256": sha256(path), "score": float(score),
                                       "kind": kind, **named}, indent=1))
    return out


def read_scores(path: str | os.PathLike | None = None) -> list[dict]:
    """The leaderboard file's entries, in order; a line that does not read is an error naming
    the file and the line."""
    path = Path(path) if path else leaderboard_file()
    if not path.exists():
        return []
    return _check_lines(path.read_text(encoding="utf-8"), path)


def _local(entry: dict) -> tuple[float, str]:
    sidecar = Path(entry["submission"] + ".score.json")
    try:
        local = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return float("nan"), ""
    if local.get("sha256") != entry["sha256"]:
        return float("nan"), "rewritten since"
    return float(local["score"]), str(local.get("kind", ""))


def leaderboard_table(path: str | os.PathLike | None = None):
    """One row per leaderboard entry (a pandas DataFrame): time, submission, note, leaderboard
    score, local score (CV or validation, from the sidecar) and its kind, and their gap."""
    import pandas as pd  # here: the submission layer's votes and checks run without pandas

    rows = []
    for entry in read_scores(path):
        local, kind = _local(entry)
        rows.append({"time": entry["time"], "submission": entry["submission"],
                     "note": entry.get("note", ""), "leaderboard": entry["score"],
                     "local": local, "local kind": kind, "gap": entry["score"] - local,
                     "sha256": entry["sha256"][:12]})
    return pd.DataFrame(rows, columns=["time", "submission", "note", "leaderboard", "local",
                                       "local kind", "gap", "sha256"])
