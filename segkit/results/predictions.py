"""Reading prediction folders (what 05_predict writes, 06 / 07 / 08 read), without torch:
quantised probabilities, meta.json, one folder (PredictionFolder), several weighted together
(PredictionSet), and scoring a folder against its COCO file (evaluate).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import atomic_path, read_json_file, write_text_atomic
from segkit.submission.vote import check_weights

PROB_SCALE = 255.0
PER_IMAGE_FILE = "per_image.csv"  # 05's per-image table, beside a validation folder's probs


def quantize_probs(probs: np.ndarray) -> np.ndarray:
    """(C, H, W) float probabilities -> uint8 (step 1/255: argmax ties aside, lossless enough
    for voting and confidence thresholds)."""
    return np.clip(np.rint(probs * PROB_SCALE), 0, 255).astype(np.uint8)


def dequantize_probs(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) / PROB_SCALE


def save_probs(pred_dir: str | os.PathLike, image_id: int, probs: np.ndarray) -> Path:
    """Store one image's probabilities (float in [0, 1] or already uint8) atomically."""
    path = Path(pred_dir) / "probs" / f"{image_id}.npy"
    q = probs if probs.dtype == np.uint8 else quantize_probs(probs)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, q)
    return path


def load_probs(pred_dir: str | os.PathLike, image_id: int) -> np.ndarray:
    """One image's probabilities as float32 (C, H, W)."""
    return dequantize_probs(PredictionFolder(pred_dir).probs(image_id))


def write_prediction_meta(pred_dir: str | os.PathLike, images: list[dict], classes: list[str],
                          size: tuple[int, int], split: str, **extra) -> Path:
    path = Path(pred_dir) / "meta.json"
    entries = [{k: img[k] for k in ("id", "file_name", "width", "height")} for img in images]
    write_text_atomic(path, json.dumps({"classes": list(classes), "size": list(size),
                                        "split": split, "images": entries, **extra}, indent=1))
    return path


def read_prediction_meta(pred_dir: str | os.PathLike) -> dict:
    if Path(pred_dir).is_file():
        raise SegkitError(f"{pred_dir}: a file, not a prediction folder (soft votes read "
                          "folders such as outputs/predictions/RUN/test; submission CSVs are "
                          "hard-voted: --method hard)")
    return read_json_file(Path(pred_dir) / "meta.json",
                          f"{pred_dir}: not a prediction folder (no meta.json)")


class PredictionFolder:
    """One prediction folder (see the module docstring); path-like."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"PredictionFolder({str(self.path)!r})"

    @cached_property
    def meta(self) -> dict:
        meta = read_prediction_meta(self.path)
        missing = [k for k in ("classes", "images") if k not in meta]
        if missing:
            raise SegkitError(f"{self.path / 'meta.json'}: missing {', '.join(missing)}")
        return meta

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def size(self) -> list[int] | None:
        return self.meta.get("size")

    @property
    def split(self) -> str:
        return self.meta.get("split", "")

    @property
    def images(self) -> list[dict]:
        return list(self.meta["images"])

    @property
    def submission(self) -> Path:
        return self.path / "submission.csv"

    def probs(self, image_id) -> np.ndarray:
        """One image's stored uint8 (C, H, W) probabilities, as stored (sums of uint8 are
        exact; `load_probs` gives float32)."""
        path = self.path / "probs" / f"{image_id}.npy"
        try:
            probs = np.load(path)
        except FileNotFoundError:
            raise SegkitError(f"{path}: no stored probabilities for image id {image_id}") from None
        except (OSError, ValueError) as exc:
            raise SegkitError(f"{path}: unreadable probabilities for image id {image_id} "
                              f"({exc})") from None
        num_classes = len(self.classes)
        if probs.dtype != np.uint8 or probs.ndim != 3 or probs.shape[0] != num_classes:
            raise SegkitError(f"{path}: expected uint8 ({num_classes}, H, W) probabilities, got "
                              f"{probs.dtype} {probs.shape}")
        return probs

    def missing_files(self, labels: bool = False) -> list[Path]:
        """The files meta.json promises that are not there: one probabilities file per image,
        a label map per image when `labels`, and the submission of a test split."""
        wanted = [self.path / "probs" / f"{img['id']}.npy" for img in self.images]
        if labels:
            wanted += [self.path / "labels" / f"{img['id']}.png" for img in self.images]
        if self.split == "test":
            wanted.append(self.submission)
        return [p for p in wanted if not p.is_file()]

    def label(self, image_id) -> np.ndarray | None:
        """The full-size label map (labels/<id>.png), or None when it was not kept."""
        from segkit.coco.files import read_label

        path = self.path / "labels" / f"{image_id}.png"
        return read_label(path) if path.exists() else None


def folder_weights(weights, count: int) -> tuple[np.ndarray, type]:
    """Checked weights and the type that sums uint8 probabilities with them: exact int32 when
    the weights are whole numbers (and the sum fits), else float64."""
    weights = check_weights(weights, count, "prediction folders")
    if (weights == np.round(weights)).all() and weights.sum() * 255 < 2**31:
        return weights.astype(np.int32), np.int32
    return weights, np.float64


@dataclass
class PredictionSet:
    """Prediction folders checked to agree (classes, size, the same images), read together.

    Example:
        folders = PredictionSet.open(["a/val", "b/val"])
        total = folders.weighted_sum(folders.images[0]["id"], [2, 1])
    """

    folders: list[PredictionFolder]

    @classmethod
    def open(cls, pred_dirs: Sequence[str | os.PathLike], minimum: int = 1) -> PredictionSet:
        folders = [PredictionFolder(d) for d in pred_dirs]
        if len(folders) < minimum:
            raise ParameterError(f"need at least {minimum} prediction folders, got "
                                 f"{len(folders)}")
        first = folders[0]
        first_ids = [img["id"] for img in first.images]
        for folder in folders[1:]:
            where = folder.path / "meta.json"
            if folder.classes != first.classes:
                raise SegkitError(f"{where}: classes {folder.classes} differ from "
                                  f"{first.path}'s {first.classes}")
            if folder.size != first.size:
                raise SegkitError(f"{where}: size {folder.size} differs from {first.path}'s "
                                  f"{first.size}")
            ids = {img["id"] for img in folder.images}
            lacking = [i for i in first_ids if i not in ids]
            extra = sorted(ids - set(first_ids))
            if lacking or extra:
                what = "; ".join(([f"lacks image ids {lacking[:5]}"] if lacking else []) +
                                 ([f"has extra image ids {extra[:5]}"] if extra else []))
                raise SegkitError(f"{where}: {what} compared with {first.path}; the folders "
                                  "must cover the same images")
        return cls(folders)

    @property
    def dirs(self) -> list[Path]:
        return [f.path for f in self.folders]

    @property
    def classes(self) -> list[str]:
        return self.folders[0].classes

    @property
    def size(self) -> list[int] | None:
        return self.folders[0].size

    @property
    def split(self) -> str:
        return self.folders[0].split

    @property
    def images(self) -> list[dict]:
        """The image entries, in the first folder's order."""
        return self.folders[0].images

    def probs(self, image_id) -> list[np.ndarray]:
        """Every folder's uint8 probabilities of one image (checked to have one shape)."""
        probs = [f.probs(image_id) for f in self.folders]
        for folder, p in zip(self.folders, probs, strict=True):
            if p.shape != probs[0].shape:
                raise SegkitError(f"{folder.path}: probabilities of image id {image_id} are "
                                  f"{p.shape}, but {self.folders[0].path}'s are {probs[0].shape}")
        return probs

    def weighted_sum(self, image_id, weights, probs: list[np.ndarray] | None = None
                     ) -> np.ndarray:
        """The weighted sum of the folders' uint8 probabilities of one image (the soft vote
        before dividing by the weights' sum; see `folder_weights` for its type). Pass `probs`
        when they are already read."""
        weights, acc_type = folder_weights(weights, len(self.folders))
        probs = self.probs(image_id) if probs is None else probs
        total = np.zeros(probs[0].shape, acc_type)
        for p, w in zip(probs, weights, strict=True):
            if w == 1:
                total += p
            elif w:
                total += p * w
        return total


@dataclass
class Evaluation:
    """Validation results of a prediction folder against its COCO file."""

    confusion: np.ndarray
    miou: float
    per_class: pd.DataFrame  # IoU, accuracy (recall) and truth pixels per class
    per_image: pd.DataFrame  # image_id, file_name, mIoU; lowest first: label-noise candidates
    # per image (index image_id, in the COCO file's order) and class: IoU (NaN where the class
    # is neither in the truth nor predicted) and truth pixels
    image_iou: pd.DataFrame | None = None
    image_truth_pixels: pd.DataFrame | None = None


def evaluate(pred_dir: str | os.PathLike, coco, classes=None) -> Evaluation:
    """Score a prediction folder of `coco`'s images: at full size when the folder holds
    full-size label maps (labels/), else at the stored probabilities' size against the truth
    shrunk by nearest neighbour."""
    import cv2

    from segkit.coco.files import cached_label_maps, read_label
    from segkit.core.classes import ClassTable
    from segkit.core.metrics import ConfusionMatrix, miou, per_class_accuracy, per_class_iou
    from segkit.submission.vote import argmax_classes

    folder = PredictionFolder(pred_dir)
    classes = classes or ClassTable.for_coco(coco.categories)
    if folder.classes != list(classes.names):
        raise SegkitError(f"{folder.path}: predicted classes {folder.classes} differ from "
                          f"{coco.path}'s {list(classes.names)}")
    truth_paths = cached_label_maps(coco, classes)
    total = ConfusionMatrix(classes.num_classes)
    rows, image_iou, image_truth = [], [], []
    for img in coco.images:
        truth = read_label(truth_paths[img["id"]])
        pred = folder.label(img["id"])
        if pred is None:
            pred = argmax_classes(folder.probs(img["id"]))
            truth = cv2.resize(truth, pred.shape[::-1], interpolation=cv2.INTER_NEAREST)
        cm = total.update(pred, truth)
        rows.append((img["id"], img["file_name"], miou(cm)))
        image_iou.append(per_class_iou(cm))
        image_truth.append(cm.sum(1))
    ids = pd.Index([img["id"] for img in coco.images], name="image_id")
    names = list(classes.names)
    image_iou = pd.DataFrame(np.array(image_iou).reshape(len(ids), len(names)), index=ids,
                             columns=names)
    image_truth = pd.DataFrame(np.array(image_truth).reshape(len(ids), len(names)), index=ids,
                               columns=names)
    cm = total.matrix
    per_class = pd.DataFrame({"IoU": per_class_iou(cm), "accuracy": per_class_accuracy(cm),
                              "truth_pixels": cm.sum(1)}, index=list(classes.names))
    per_image = pd.DataFrame(rows, columns=["image_id", "file_name", "mIoU"]).sort_values(
        ["mIoU", "image_id"]).reset_index(drop=True)
    return Evaluation(cm, miou(cm), per_class, per_image, image_iou, image_truth)
