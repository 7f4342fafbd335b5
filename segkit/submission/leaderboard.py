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

import hashlib
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import outputs_dir, write_text_atomic
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
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as f:  # one write of one line: O_APPEND
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return entry


def write_local_score(submission: str | os.PathLike, score: float, kind: str) -> Path:
    """`<submission>.score.json`: the local score of these very bytes (kind: e.g. "OOF mIoU",
    "validation mIoU (fold 0)")."""
    path = _check_submission(submission)
    out = path.with_name(path.name + ".score.json")
    write_text_atomic(out, json.dumps({"sha256": sha256(path), "score": float(score),
                                       "kind": kind}, indent=1))
    return out


def read_scores(path: str | os.PathLike | None = None) -> list[dict]:
    """The leaderboard file's entries, in order; a line that does not read is an error naming
    the file and the line."""
    path = Path(path) if path else leaderboard_file()
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
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
