"""The record of decisions taken on OOF predictions: decisions.json written and read, its
tables, and the decided submission of test predictions (segkit.predict.decisions fits them)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segkit.core.errors import SegkitError
from segkit.core.paths import outputs_dir, write_text_atomic
from segkit.predict.decision_rules import UNIT, _labels, _remove_small
from segkit.results.predictions import PredictionSet


@dataclass
class Decisions:
    """What `fit_decisions` decided (`record`: decisions.json's content) and where it is
    stored (`path`, once written or read)."""

    record: dict
    path: Path | None = None

    @property
    def members(self) -> list[str]:
        return list(self.record["members"])

    @property
    def classes(self) -> list[str]:
        return list(self.record["classes"])

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.record["size"])

    @property
    def weights(self) -> list[float]:
        """The members' soft-vote weights: fitted when the weights decision was kept, else
        the start weights."""
        return list(self.record["final"]["weights"])

    @property
    def kept(self) -> list[str]:
        return [s["decision"] for s in self.record["steps"] if s["kept"]]

    @property
    def miou_before(self) -> float:
        return float(self.record["before"]["mIoU"])

    @property
    def miou_after(self) -> float:
        """OOF mIoU with the kept decisions (cross-fitted)."""
        return float(self.record["after"]["mIoU"])

    def _bias_units(self):
        bias = self.record["final"].get("class_bias")
        return None if not bias else np.array([round(bias[k] * UNIT) for k in self.classes],
                                              np.int32)

    def _min_area(self):
        areas = self.record["final"].get("min_area")
        return None if not areas else [int(areas[k]) for k in self.classes]

    def labels(self, probs: np.ndarray) -> np.ndarray:
        """The decided label map of one image's voted uint8 probabilities (C, H, W)."""
        label = _labels(probs, self._bias_units())
        areas = self._min_area()
        return label if areas is None else _remove_small(label, areas, len(self.classes))

    def summary(self):
        """One row per decision: tried, kept, OOF mIoU before and after (cross-fitted), the
        gain, the noise, the per-fold gains, why."""
        import pandas as pd

        rows = []
        for s in self.record["steps"]:
            rows.append({"decision": s["decision"], "tried": s["tried"], "kept": s["kept"],
                         "OOF before": s.get("oof_before", {}).get("mIoU"),
                         "OOF after": s.get("oof_after", {}).get("mIoU"),
                         "gain": s.get("gain"), "noise": s.get("noise"),
                         "per-fold gains": ", ".join(f"{g:+.4f}" for g in
                                                     s.get("per_fold_gain", [])),
                         "why": s["why"]})
        return pd.DataFrame(rows)

    def table(self):
        """Per-class IoU (rows: classes, then mIoU) out of fold before any decision and after
        each decision tried (cross-fitted), the column naming whether it was kept."""
        import pandas as pd

        def column(scored):
            return [scored["per_class"].get(k) for k in self.classes] + [scored["mIoU"]]

        columns = {"before": column(self.record["before"])}
        for s in self.record["steps"]:
            if s["tried"]:
                columns[f"{s['decision']} ({'kept' if s['kept'] else 'not kept'})"] = \
                    column(s["oof_after"])
        columns["after (kept ones)"] = column(self.record["after"])
        return pd.DataFrame(columns, index=self.classes + ["mIoU"], dtype=float)

    def report(self) -> str:
        """What `segkit decide` prints."""
        import pandas as pd

        fitted = []
        for s in self.record["steps"]:
            if s["tried"]:
                values = ", ".join(f"{k} {v:g}" for k, v in s["fitted"].items()
                                   if s["decision"] == "weights" or v)
                fitted.append(f"{s['decision']}: {'kept' if s['kept'] else 'not kept'}: "
                              f"{s['why']}; fitted on all: {values or 'nothing changed'}")
            else:
                fitted.append(f"{s['decision']}: not tried ({s['why']})")
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            table = self.table().to_string(float_format=lambda v: f"{v:.4f}", na_rep="absent")
        where = f" -> {self.path}" if self.path else ""
        return "\n".join([f"decisions on {self.record['images']} OOF images of "
                          f"{self.record['folds']} folds ({', '.join(self.members)}){where}",
                          f"rule: {self.record['rule']}", "", *fitted, "", table, "",
                          f"OOF mIoU: {self.miou_before:.4f} before, {self.miou_after:.4f} "
                          f"with the kept decisions ({', '.join(self.kept) or 'none'})"])


def decisions_dir(name: str) -> Path:
    """outputs/decisions/<name>/"""
    return outputs_dir() / "decisions" / name


def write_decisions(decisions: Decisions, name: str) -> Path:
    """decisions.json in outputs/decisions/<name>/ (written whole)."""
    path = decisions_dir(name) / "decisions.json"
    write_text_atomic(path, json.dumps(decisions.record, indent=1))
    decisions.path = path
    return path


def load_decisions(path: str | os.PathLike) -> Decisions:
    """A decisions.json (a file, or its outputs/decisions/<name> folder or name); a missing
    or malformed one is a SegkitError naming it."""
    given = Path(path)
    candidates = [given, given / "decisions.json", decisions_dir(str(path)) / "decisions.json"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise SegkitError(f"{path}: no decisions.json there (write one with `segkit decide` or "
                          "07_ensemble's decisions=fit)")
    try:
        record = json.loads(found.read_text())
        record["classes"], record["size"], record["final"]["weights"], record["steps"]
        record["after"]["mIoU"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SegkitError(f"{found}: not a decisions file ({exc})") from None
    return Decisions(record, found.resolve())


def decided_submission(decisions: Decisions, test_dirs: Sequence[str | os.PathLike],
                       weights: Sequence[float] | None, out_csv: str | os.PathLike,
                       test_json: str | os.PathLike | None = None) -> Path:
    """The submission of test prediction folders voted with `weights` (one per folder; None:
    equal), rounded to uint8, with the decisions' class biases and minimum areas applied;
    checked against `test_json` (a SubmissionError names the first problem)."""
    from segkit.core.errors import SubmissionError
    from segkit.results.predictions import folder_weights
    from segkit.submission.files import submission_writer, validate_submission
    from segkit.submission.vote import refuse_overwriting_inputs

    folders = PredictionSet.open(test_dirs, minimum=1)
    where = decisions.path or "the decisions"
    if folders.classes != decisions.classes:
        raise SegkitError(f"{where}: decided for classes {decisions.classes}, the test "
                          f"predictions have {folders.classes}")
    if tuple(folders.size or ()) != decisions.size:
        raise SegkitError(f"{where}: decided at size {list(decisions.size)} (regions in pixels "
                          f"there), the test probabilities are {folders.size}: predict at the "
                          "OOF predictions' out_size")
    checked, _ = folder_weights(weights, len(folders.dirs))
    total = float(np.sum(checked))
    out_csv = Path(out_csv)
    refuse_overwriting_inputs(out_csv, [d / "submission.csv" for d in folders.dirs])
    with submission_writer(out_csv, len(folders.classes), decisions.size) as writer:
        for image in folders.images:
            acc = folders.weighted_sum(image["id"], weights)
            q = np.clip(np.rint(acc / total), 0, 255).astype(np.uint8)
            writer.write_row(image["file_name"], decisions.labels(q))
    if test_json is not None:
        problems = validate_submission(out_csv, test_json, num_classes=len(folders.classes),
                                       size=decisions.size)
        if problems:
            raise SubmissionError(f"{out_csv}: {problems[0]}")
    return out_csv
