"""A training run folder as an object: its parameters, config, checkpoints, logged scalars and
summary, and the data it was trained and validated on.

A run folder (`outputs/runs/<name>/`, mmengine's work_dir) holds params.json (every training
parameter), data.json (the files it trained and validated on: see below), config.py (the mmseg
config), environment.json, checkpoints (`best_mIoU_iter_N.pth`, `iter_N.pth`,
`last_checkpoint`), `<timestamp>/vis_data/scalars.json` logs and summary.json.

data.json records the data root, the train and validation COCO files and the extra train
sources (resolved path and sha256 of each) and, for a fold, the split folder with what its
split.json says (source file, seed, stratification, group rule). Everything that asks a run
for its validation file (`Run.data`: predict, `segkit oof`, 07's members, 08, round 2 of
pseudo labels) gets the recorded file, found by its content, and a file whose content changed
since training is refused in one line: a re-split with another seed would otherwise score the
run on images it trained on. Runs made before data.json existed resolve their files from
params.json (fold and splits_dir), as they always did.

Example:
    run = Run.open("efficientnet_lite0_fold0")           # a name, or a path
    run.checkpoint("best"), run.summary().best_miou
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import (
    PROJECT_ROOT,
    file_sha256,
    outputs_dir,
    read_json_file,
    resolve_output_path,
    write_text_atomic,
)
from segkit.results.run_data import DATA_FILE, _entries

_CHANGED = {"val": "scores on it would not be the run's validation scores (it may hold images "
                   "the run trained on)",
            "train": "the split it belongs to is not the run's any more"}


@dataclass
class RunResult:
    """How a run did: where its checkpoints are, its best validation mIoU and that validation's
    per-class IoU, every logged scalar, and the training time in seconds."""

    work_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_miou: float
    per_class_iou: pd.Series
    scalars: pd.DataFrame = field(repr=False)
    seconds: float = 0.0


def read_scalars(work_dir: str | os.PathLike) -> pd.DataFrame:
    """All logged scalars of a run (every resumed session), one row per logged step.

    Training rows carry `loss`, `lr`, ...; validation rows `mIoU`, `IoU.<class>`. A session's
    last line cut short (the session was killed while logging) is left out; a broken line
    before it is a SegkitError naming the file.
    """
    rows = []
    for path in sorted(Path(work_dir).glob("*/vis_data/scalars.json")):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        for number, line in enumerate(lines, 1):
            try:
                rows.append(json.loads(line))
            except ValueError:
                if number < len(lines):
                    raise SegkitError(f"{path}: line {number} is not JSON") from None
    if not rows:
        return pd.DataFrame(columns=["step"])
    df = pd.DataFrame(rows)
    if "iter" in df and "step" in df:
        df["step"] = df["step"].fillna(df["iter"])
    elif "iter" in df:
        df["step"] = df["iter"]
    df["kind"] = np.where(df.get("mIoU", pd.Series(np.nan, index=df.index)).notna(),
                          "val", "train")
    return df.drop_duplicates(subset=["kind", "step"], keep="last").sort_values(
        ["step", "kind"]).reset_index(drop=True)


def _iteration(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[-1])


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why a checkpoint file cannot be loaded (missing, empty, cut short), or None. torch
    saves a zip archive whose index sits at its end, so a truncated file fails to open; a
    file in the legacy (pickle) format is left to torch."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not head:
        return "it is empty"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path):
                return None
        except (OSError, zipfile.BadZipFile):
            return "it is cut short: its zip index is missing"
    return None


class Run:
    """One run folder. `Run.open(NAME_OR_PATH)` finds it from any working directory; a Run is
    path-like (`os.fspath(run)`), so it goes wherever a folder path does."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def open(cls, run: str | os.PathLike | Run) -> Run:
        """A run by path or by name: as given from here, from the project root, under the
        outputs folder, or under outputs/runs; a SegkitError names where it looked."""
        if isinstance(run, Run):
            return run
        text = os.fspath(run)
        if not text:
            raise ParameterError("no run folder given")
        path = Path(text)
        places = [path] if path.is_absolute() else \
            [Path.cwd() / path, PROJECT_ROOT / path, outputs_dir() / path,
             outputs_dir() / "runs" / path]
        for place in places:
            if (place / "params.json").is_file() or any(place.glob("*.pth")):
                return cls(place.resolve())
        raise SegkitError(f"{text}: not a run folder (no params.json or checkpoint in "
                          f"{', '.join(dict.fromkeys(str(p) for p in places))})")

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def parameters(self) -> dict:
        """The training parameters the run recorded (params.json)."""
        return read_json_file(self.path / "params.json",
                              f"{self.path}: not a run folder (no params.json)")

    @property
    def config_path(self) -> Path:
        return self.path / "config.py"

    @property
    def full_data(self) -> bool:
        """Trained on every training image (fold=all): no out-of-fold prediction, and no
        validation file unless it was given a holdout_file."""
        return self.parameters.get("fold") == "all" and not self.parameters.get("train_file")

    # --- checkpoints ----------------------------------------------------------------------

    @property
    def best_checkpoint(self) -> Path | None:
        found = sorted(self.path.glob("best_mIoU_iter_*.pth"), key=_iteration)
        return found[-1] if found else None

    @property
    def last_checkpoint(self) -> Path | None:
        marker = self.path / "last_checkpoint"
        if marker.exists():
            # mmengine writes an absolute path; the run folder may have moved since, so the
            # name is looked up in the folder itself
            path = self.path / Path(marker.read_text().strip()).name
            if path.is_file():  # an empty marker (a write cut short) names the folder itself
                return path
        found = self.checkpoints()
        return found[max(found)] if found else None

    def checkpoints(self) -> dict[int, Path]:
        """The interval checkpoints (`iter_N.pth`) by iteration."""
        return {_iteration(p): p for p in sorted(self.path.glob("iter_*.pth"), key=_iteration)}

    def resume_point(self) -> tuple[Path | None, list[Path]]:
        """(the newest interval checkpoint that reads back whole, the newer ones that do not):
        where `resume=True` continues. A checkpoint is a zip archive whose index sits at its
        end, so a truncated file fails to open."""
        import zipfile

        broken = []
        for _, path in sorted(self.checkpoints().items(), reverse=True):
            try:
                with zipfile.ZipFile(path):
                    return path, broken
            except (OSError, zipfile.BadZipFile):
                broken.append(path)
        return None, broken

    def checkpoint(self, which: str | int = "best") -> Path:
        """`best` (the last when no best was kept), `last`, an iteration (`2000` or
        `iter_2000`), or a checkpoint file (absolute, or in the run folder)."""
        text = str(which)
        if text in ("best", "last"):
            path = self.best_checkpoint if text == "best" else None
            if text == "best" and path is None:
                self._refuse_lost_best()
                path = self.last_checkpoint
                if path is not None:
                    warnings.warn(f"{self.path}: no best checkpoint (the run never validated): "
                                  f"using the last, {path.name}", stacklevel=2)
            path = path or self.last_checkpoint
        elif text.removeprefix("iter_").isdigit():
            path = self.checkpoints().get(int(text.removeprefix("iter_")))
        else:
            candidates = [Path(text), self.path / text]
            path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise SegkitError(f"{self.path}: no checkpoint {text!r} in the run folder "
                              f"(iterations there: {sorted(self.checkpoints()) or 'none'})")
        return path

    def _refuse_lost_best(self) -> None:
        """A SegkitError when the run kept a best checkpoint that is gone (it validated, so
        mmengine saved one): `best` must not quietly mean another checkpoint."""
        recorded = str(self.recorded_summary().get("best_checkpoint") or "")
        name = Path(recorded).name if recorded not in ("", "None") else ""
        if not name:
            scalars = self.scalars()
            if "mIoU" not in scalars or not np.isfinite(scalars["mIoU"].astype(float)).any():
                return  # never validated: there never was a best
            name = "best_mIoU_iter_*.pth"
        raise SegkitError(f"{self.path}: its best checkpoint {name} is gone (deleted?); "
                          f"pick another one ({self._alternatives()}) or retrain")

    def _alternatives(self, but: Path | None = None) -> str:
        """The checkpoints one could pick instead, for a message."""
        iters = [str(k) for k, p in self.checkpoints().items() if p != but]
        last = self.last_checkpoint
        names = (["last"] if last is not None and last != but else []) + iters
        return "checkpoint: " + (", ".join(names) if names else "none left in the run folder")

    def check_checkpoint(self, path: str | os.PathLike) -> Path:
        """`path` when it reads back; a SegkitError naming it (cut short, empty) and the
        other checkpoints of the run when it does not."""
        path = Path(path)
        problem = checkpoint_problem(path)
        if problem:
            raise SegkitError(f"{path}: the checkpoint does not read back ({problem}: a write "
                              f"cut short?); retrain, or pick another one "
                              f"({self._alternatives(but=path)})")
        return path

    # --- results --------------------------------------------------------------------------

    def scalars(self) -> pd.DataFrame:
        return read_scalars(self.path)

    def recorded_summary(self) -> dict:
        """summary.json as written at the end of training ({} when absent or unreadable)."""
        try:
            return json.loads((self.path / "summary.json").read_text())
        except (OSError, ValueError):
            return {}

    @property
    def trained(self) -> dict:
        """What the run's config really trained (summary.json's `trained`: iters or epochs,
        image_size, crop_size, batch_size, optimizer, lr, schedule; written by
        segkit.train.config_modes.trained_settings), {} for runs recorded before it was."""
        return self.recorded_summary().get("trained") or {}

    def summary(self, seconds: float | None = None) -> RunResult:
        """Best validation mIoU and per-class IoU (of the best checkpoint's validation); the
        training time comes from summary.json unless given."""
        if seconds is None:
            seconds = float(self.recorded_summary().get("seconds", float("nan")))
        scalars = self.scalars()
        val = scalars[scalars["kind"] == "val"] if "kind" in scalars else scalars.iloc[0:0]
        if len(val):
            best = val.loc[val["mIoU"].idxmax()]
            per_class = best[[c for c in val.columns if c.startswith("IoU.")]].astype(float)
            per_class.index = [c[4:] for c in per_class.index]
            best_miou = float(best["mIoU"])
        else:
            per_class, best_miou = pd.Series(dtype=float), float("nan")
        return RunResult(self.path, self.best_checkpoint, self.last_checkpoint, best_miou,
                         per_class, scalars, seconds)

    # --- data -----------------------------------------------------------------------------

    @property
    def data_root(self) -> Path:
        from segkit.data.sample import resolve_data_root

        recorded = self.recorded_data()
        if recorded and recorded.get("data_root") and Path(recorded["data_root"]).is_dir():
            return Path(recorded["data_root"])
        return resolve_data_root(self.parameters.get("data_root") or "")

    def recorded_data(self) -> dict | None:
        """data.json (module docstring), or None for a run made before it was recorded."""
        path = self.path / DATA_FILE
        if not path.exists():
            return None
        recorded = read_json_file(path, f"{path}: no data record")
        if not isinstance(recorded, dict) or not all(
                isinstance(recorded.get(k), dict) and "sha256" in recorded[k]
                for k in ("train", "val") if k == "train" or recorded.get("val") is not None):
            raise SegkitError(f"{path}: not a data record (expected train and val entries with "
                              "path and sha256)")
        return recorded

    def _params_fold_files(self) -> tuple[Path, Path]:
        """(train, val) as params.json names them (the resolution of runs without data.json)."""
        from segkit.folds.files import fold_files

        params = self.parameters
        if params.get("train_file") and params.get("val_file"):
            return (resolve_output_path(params["train_file"]),
                    resolve_output_path(params["val_file"]))
        if self.full_data:  # (its first training file, its holdout file or None)
            from segkit.folds.full_data import full_data_sources

            files, holdout = full_data_sources(params.get("data_root") or "",
                                               params.get("splits_dir") or "",
                                               params.get("holdout_file") or "")
            return files[0], holdout
        splits = params.get("splits_dir") or outputs_dir() / "splits"
        return fold_files(resolve_output_path(splits), int(params.get("fold") or 0))

    def _remedy(self, recorded: dict) -> str:
        """How to get the run's data back: the split command with the run's seed, or retrain."""
        from segkit.folds.files import split_command

        split = recorded.get("split") or {}
        command = split_command(split, split["folder"]) if split.get("folder") else None
        if command:
            return f"re-split with the run's seed ({command}) or retrain the run"
        if split.get("folder"):
            return (f"restore the fold files in {split['folder']} as they were (the run's split "
                    "seed is not recorded) or retrain the run")
        return "restore the file as it was or retrain the run"

    def _recorded_file(self, recorded: dict, key: str, what: str,
                       fallback: Path | None = None) -> Path:
        """The file data.json records under `key`, found by its content: at its recorded path,
        else at `fallback` (where params.json points: a run folder moved to another machine);
        a file there with other content, or none, is a SegkitError saying how to proceed."""
        entry = recorded[key]
        candidates = list(dict.fromkeys(p for p in (Path(entry.get("path") or ""), fallback)
                                        if p is not None and str(p) not in ("", ".")))
        changed = None
        for candidate in candidates:
            if candidate.is_file():
                digest = file_sha256(candidate)
                if digest == entry["sha256"]:
                    return candidate
                changed = changed or (candidate, digest)
        if changed:
            raise SegkitError(
                f"{self.path}: its {what} file {changed[0]} changed since the run was trained "
                f"(sha256 {entry['sha256'][:12]} in {DATA_FILE}, now {changed[1][:12]}): "
                f"{_CHANGED.get(key, 'not what it trained on')}; {self._remedy(recorded)}")
        raise SegkitError(f"{self.path}: its {what} file {entry.get('path')} (in {DATA_FILE}) "
                          f"is gone; {self._remedy(recorded)}")

    def fold_files(self) -> tuple[Path, Path]:
        """(train, val) COCO files the run was trained and validated on: those data.json
        records (their content checked), else those params.json names."""
        recorded = self.recorded_data()
        if recorded is None:
            return self._params_fold_files()
        try:
            fallback = self._params_fold_files()
        except SegkitError:
            fallback = (None, None)
        val = (self._recorded_file(recorded, "val", "validation", fallback[1])
               if recorded.get("val") is not None else None)  # None: full data, no holdout
        return self._recorded_file(recorded, "train", "training", fallback[0]), val

    def check_data(self, extra: bool = True) -> dict | None:
        """data.json with every recorded file checked (the extra train sources too, unless
        `extra` is False); None for a run without it. A changed file is a SegkitError."""
        recorded = self.recorded_data()
        if recorded is not None:
            self.fold_files()
            for source in (recorded.get("extra_train") or []) if extra else []:
                self._recorded_file({**recorded, "extra": source}, "extra", "extra training")
        return recorded

    def record_data(self, record: dict, continuing: bool = False) -> Path:
        """Write data.json (`data_record`). `continuing`: the run resumes from a checkpoint,
        and one whose data.json records other files than `record` is refused (one line
        naming the file) before anything is written."""
        recorded = self.recorded_data() if continuing else None
        if recorded is not None:
            before = {e["path"]: e["sha256"] for e in _entries(recorded)}
            now = {e["path"]: e["sha256"] for e in _entries(record)}
            for path, digest in before.items():
                if now.get(path) != digest:
                    state = "is no longer among its files" if path not in now else \
                        f"changed (sha256 {digest[:12]} in {DATA_FILE}, now {now[path][:12]})"
                    raise SegkitError(
                        f"{self.path}: cannot resume: {path} {state} since the run started, so "
                        f"it would continue on other data; {self._remedy(recorded)}, or train "
                        "into another run_name")
        write_text_atomic(self.path / DATA_FILE, json.dumps(record, indent=1))
        return self.path / DATA_FILE

    def data(self) -> tuple[Path, Path]:
        """(data root, validation COCO file) the run was trained with (see `fold_files`)."""
        return self.data_root, self.fold_files()[1]


