"""Inference: TTA, sliding windows, probabilities at submission size, stored compactly.

A prediction folder (`outputs/predictions/<run>/<split>/`) holds:
    meta.json            classes, size, split, and the COCO image entries in order
    probs/<image_id>.npy uint8 (C, H, W): class probabilities quantised as round(p * 255)
    submission.csv       for the test split
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from segkit.errors import SegkitError
from segkit.paths import atomic_path, write_text_atomic

PROB_SCALE = 255.0


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
    path = Path(pred_dir) / "probs" / f"{image_id}.npy"
    try:
        return dequantize_probs(np.load(path))
    except FileNotFoundError:
        raise SegkitError(f"{path}: no stored probabilities for image id {image_id}") from None


def write_prediction_meta(pred_dir: str | os.PathLike, images: list[dict], classes: list[str],
                          size: tuple[int, int], split: str, **extra) -> Path:
    path = Path(pred_dir) / "meta.json"
    entries = [{k: img[k] for k in ("id", "file_name", "width", "height")} for img in images]
    write_text_atomic(path, json.dumps({"classes": list(classes), "size": list(size),
                                        "split": split, "images": entries, **extra}, indent=1))
    return path


def read_prediction_meta(pred_dir: str | os.PathLike) -> dict:
    path = Path(pred_dir) / "meta.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SegkitError(f"{pred_dir}: not a prediction folder (no meta.json)") from None
