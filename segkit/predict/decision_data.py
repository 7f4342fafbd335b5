"""The OOF probabilities and truth that decisions are fitted on, read a few images at a time
(segkit.predict.decisions), and their scores."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from segkit.core.classes import IGNORE_INDEX
from segkit.core.errors import ParameterError, SegkitError
from segkit.core.metrics import miou
from segkit.results.predictions import PredictionSet

CHUNK = 16  # images per array operation


def oof_folds(folder) -> dict[int, int]:
    """image id -> fold index of an OOF prediction folder (segkit.predict.cv: its meta.json
    names the folds' validation files, in fold order)."""
    from segkit.coco.files import load_coco
    from segkit.results.predictions import PredictionFolder

    folder = PredictionFolder(folder)
    files = (folder.meta.get("oof") or {}).get("val_files")
    if not files:
        raise SegkitError(f"{folder.path}: not an out-of-fold prediction (its meta.json names no "
                          "fold validation files): decisions are fitted on OOF predictions of "
                          "a recipe's fold runs (segkit oof / 07_ensemble)")
    return {img["id"]: k for k, path in enumerate(files) for img in load_coco(path).images}


@dataclass
class _Oof:
    members: list[np.ndarray]  # each (N, C, H, W) uint8
    truth: np.ndarray  # (N, H, W) uint8
    fold: np.ndarray  # (N,) fold index 0..k-1
    classes: list[str]
    ids: list[int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def folds(self) -> int:
        return int(self.fold.max()) + 1

    def chunks(self, index: np.ndarray):
        for start in range(0, len(index), CHUNK):
            part = index[start:start + CHUNK]
            yield part, [m[part] for m in self.members]

    def confusion(self, labels: np.ndarray, index: np.ndarray, by_fold: bool = False
                  ) -> np.ndarray:
        """(C, C) confusion matrix of label maps of images `index`, or (folds, C, C)."""
        c = self.num_classes
        size = (self.folds if by_fold else 1) * c * c
        counts = np.zeros(size, np.int64)
        for start in range(0, len(index), 4 * CHUNK):  # int64 codes of a few images at a time
            part = slice(start, start + 4 * CHUNK)
            truth = self.truth[index[part]]
            keep = truth != IGNORE_INDEX
            code = truth.astype(np.int64) * c + labels[part]
            if by_fold:
                code += (self.fold[index[part]] * c * c)[:, None, None]
            counts += np.bincount(code[keep], minlength=size)
        return counts.reshape(self.folds, c, c) if by_fold else counts.reshape(c, c)


def _load(pred_dirs, truth, folds) -> _Oof:
    from segkit.predict.ensemble import _truth_for

    folders = PredictionSet.open(pred_dirs, minimum=1)
    images = folders.images
    if folds is None:
        folds = oof_folds(folders.dirs[0])
    c = len(folders.classes)
    first = folders.folders[0].probs(images[0]["id"])
    members = []
    for folder in folders.folders:  # filled in place: one copy of every probability in memory
        stacked = np.empty((len(images), *first.shape), np.uint8)
        for k, img in enumerate(images):
            stacked[k] = folder.probs(img["id"])
        members.append(stacked)
    labels = np.stack([_truth_for(truth, img, members[0].shape[2:], c, IGNORE_INDEX)
                       for img in images]).astype(np.uint8)
    missing = [img["id"] for img in images if img["id"] not in folds]
    if missing:
        raise ParameterError(f"no fold for image ids {missing[:5]}: give every image its fold")
    found = sorted({int(folds[img["id"]]) for img in images})
    codes = {k: i for i, k in enumerate(found)}
    fold = np.array([codes[int(folds[img["id"]])] for img in images], np.int64)
    if len(found) < 2:
        raise SegkitError("decisions are judged across folds: the OOF predictions hold one fold "
                          "only (give every fold run of the recipe)")
    return _Oof(members, labels, fold, list(folders.classes), [img["id"] for img in images])


def _miou_of(cm: np.ndarray) -> float:
    value = miou(cm)
    return float(value) if not math.isnan(value) else -1.0
