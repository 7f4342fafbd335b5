"""A training run folder as an object: its parameters, config, checkpoints, logged scalars and
summary, and the data it was trained and validated on.

A run folder (`outputs/runs/<name>/`, mmengine's work_dir) holds params.json (every training
parameter), config.py (the mmseg config), environment.json, checkpoints (`best_mIoU_iter_N.pth`,
`iter_N.pth`, `last_checkpoint`), `<timestamp>/vis_data/scalars.json` logs and summary.json.

Example:
    run = Run.open("efficientnet_lite0_fold0")           # a name, or a path
    run.checkpoint("best"), run.summary().best_miou
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import PROJECT_ROOT, outputs_dir, read_json_file, resolve_output_path


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

    Training rows carry `loss`, `lr`, ...; validation rows `mIoU`, `IoU.<class>`.
    """
    rows = []
    for path in sorted(Path(work_dir).glob("*/vis_data/scalars.json")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
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
            if path.exists():
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

    # --- results --------------------------------------------------------------------------

    def scalars(self) -> pd.DataFrame:
        return read_scalars(self.path)

    def recorded_summary(self) -> dict:
        """summary.json as written at the end of training ({} when absent or unreadable)."""
        try:
            return json.loads((self.path / "summary.json").read_text())
        except (OSError, ValueError):
            return {}

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

        return resolve_data_root(self.parameters.get("data_root") or "")

    def fold_files(self) -> tuple[Path, Path]:
        """(train, val) COCO files the run was trained and validated on."""
        from segkit.folds.files import fold_files

        params = self.parameters
        if params.get("train_file") and params.get("val_file"):
            return (resolve_output_path(params["train_file"]),
                    resolve_output_path(params["val_file"]))
        splits = params.get("splits_dir") or outputs_dir() / "splits"
        return fold_files(resolve_output_path(splits), int(params.get("fold") or 0))

    def data(self) -> tuple[Path, Path]:
        """(data root, validation COCO file) the run was trained with."""
        return self.data_root, self.fold_files()[1]


def find_runs(runs_root: str | os.PathLike | None = None, fold: int | None = None,
              checkpoint: str = "last") -> list[Run]:
    """Run folders under `runs_root` (default outputs/runs) holding the `checkpoint`, sorted by
    name; with `fold`, only those validated on that fold's file in outputs/splits."""
    from segkit.folds.files import fold_files

    root = Path(runs_root) if runs_root else outputs_dir() / "runs"
    if not root.is_dir():
        return []
    wanted = None
    if fold is not None:
        try:
            wanted = fold_files(outputs_dir() / "splits", int(fold))[1].resolve()
        except ParameterError:
            return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        run = Run(folder)
        try:
            run.checkpoint(checkpoint)
            if wanted is None or run.data()[1].resolve() == wanted:
                found.append(run)
        except SegkitError:
            continue
    return found


def common_validation(runs: Sequence[str | os.PathLike | Run]) -> tuple[Path, Path]:
    """(data root, validation COCO file) shared by all the runs; runs validated on different
    files cannot be compared on one: a SegkitError names the run."""
    if not runs:
        raise ParameterError("no run folders given")
    opened = [Run.open(r) for r in runs]
    root, val = opened[0].data()
    for run in opened[1:]:
        other = run.data()[1]
        if other.resolve() != val.resolve():
            raise SegkitError(f"{run.path}: validated on {other}, but {opened[0].path} on "
                              f"{val}; ensembles compare runs of the same fold")
    return root, val


