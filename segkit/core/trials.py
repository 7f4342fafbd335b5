"""The link between a training run and a search trial (segkit.search): which Optuna study and
trial a run reports its validation mIoU to, passed in the environment variable SEGKIT_TRIAL
(so 04_train, papermill and torchrun carry it unchanged), and opening a study's storage.

Optuna is the `search` extra: `import_optuna` names the extra to install when it is missing.

Example:
    os.environ.update(trial_environment("outputs/search/demo/journal.log", "demo", 3))
    trial_link()["trial"]   # 3
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from segkit.core.errors import ParameterError, SegkitError

TRIAL_ENV = "SEGKIT_TRIAL"
SEARCH_EXTRA = "pip install 'segkit[search]'  (Optuna and optuna-dashboard)"


class MissingExtraError(SegkitError):
    """An optional dependency is not installed: names the extra that installs it."""


def import_optuna():
    """The optuna module; a MissingExtraError (one line, exit 2) naming the extra when absent."""
    try:
        import optuna
    except ImportError:
        raise MissingExtraError(f"search needs Optuna, which is not installed: "
                                f"{SEARCH_EXTRA}") from None
    return optuna


def trial_environment(storage: str | os.PathLike, study: str, trial: int,
                      step_offset: int = 0, pruner: dict | None = None) -> dict:
    """{SEGKIT_TRIAL: ...}: the environment that makes a training run report to a trial;
    `step_offset` is added to the iteration (a trial's later folds report after its earlier),
    `pruner` is the study's (`make_pruner`: the training process decides with the same one)."""
    return {TRIAL_ENV: json.dumps({"storage": os.fspath(storage), "study": study,
                                   "trial": int(trial), "step_offset": int(step_offset),
                                   "pruner": pruner or {"type": "none"}})}


def trial_link() -> dict | None:
    """The trial this process's training reports to (SEGKIT_TRIAL), or None when unset."""
    text = os.environ.get(TRIAL_ENV, "").strip()
    if not text:
        return None
    try:
        link = json.loads(text)
        if not isinstance(link["storage"], str) or not isinstance(link["study"], str):
            raise TypeError
        link["trial"], link["step_offset"] = int(link["trial"]), int(link.get("step_offset", 0))
        link["pruner"] = dict(link.get("pruner") or {"type": "none"})
    except (ValueError, TypeError, KeyError):
        raise ParameterError(f"{TRIAL_ENV}={text!r}: expected JSON with storage, study and "
                             "trial (set by segkit search)") from None
    return link


def is_storage_url(storage: str | os.PathLike) -> bool:
    """A database or Redis URL (sqlite:///..., postgresql://..., redis://...), not a file."""
    return "://" in os.fspath(storage)


def open_storage(storage: str | os.PathLike):
    """An Optuna storage: a URL as Optuna reads it (RDB; `redis://` as a journal on Redis), any
    other text a journal file (JournalStorage with its file backend: several processes, and
    machines sharing the folder over NFS, may write it at once)."""
    optuna = import_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

    text = os.fspath(storage)
    if text.startswith("redis://"):
        return JournalStorage(JournalRedisBackend(text))
    if is_storage_url(text):
        return optuna.storages.get_storage(text)
    path = Path(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


PRUNER_TYPES = {"hyperband": "HyperbandPruner", "successive_halving": "SuccessiveHalvingPruner",
                "median": "MedianPruner", "none": "NopPruner"}


def make_pruner(spec: dict):
    """An Optuna pruner from {type: hyperband | successive_halving | median | none, its
    options...}."""
    optuna = import_optuna()
    spec = dict(spec)
    kind = spec.pop("type", "none")
    if kind not in PRUNER_TYPES:
        raise ParameterError(f"pruner {kind!r}; allowed: {', '.join(PRUNER_TYPES)}")
    return getattr(optuna.pruners, PRUNER_TYPES[kind])(**spec)


def open_trial(link: dict):
    """The Optuna trial of a `trial_link`, in a study loaded with the study's pruner: report
    to it and ask it `should_prune()`."""
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=link["study"], storage=open_storage(link["storage"]),
                              pruner=make_pruner(link.get("pruner") or {}))
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id,
                                                                     int(link["trial"]))
    return optuna.trial.Trial(study, trial_id)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), telling a process from a
    later one that got its pid; None where /proc is not there."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()[19]


def process_identity(pid: int | None = None) -> dict:
    """{host, pid, start} of a process (default: this one), for `process_alive` elsewhere."""
    import socket

    pid = os.getpid() if pid is None else int(pid)
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}


def process_alive(identity: dict) -> bool | None:
    """Whether the process of a `process_identity` record still runs; None when it ran on
    another host (only a heartbeat can tell)."""
    import socket

    if identity.get("host") != socket.gethostname():
        return None
    pid = int(identity.get("pid") or 0)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = identity.get("start")
    return start is None or _start_time(pid) == start
