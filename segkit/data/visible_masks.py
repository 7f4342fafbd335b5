"""What each annotation shows under segkit's painting rule (largest first, later ones on top):
visible areas, the owner map of a whole image, one annotation's visible mask.

Used by copy-paste (which instances are worth cutting out, what a pasted object covers) and
computed on run-length encodings where a full HxW mask per annotation is not needed.

Example:
    owner, masks = owner_map(anns, image["height"], image["width"])
    (owner == 3).sum() == visible_areas(anns, image["height"], image["width"])[3]
"""

from __future__ import annotations

import warnings

import numpy as np
from pycocotools import mask as mask_utils

from segkit.coco.files import _compressed_rle, rasterize


def _rles(annotations: list[dict], height: int, width: int) -> list[dict]:
    return [{"size": [height, width], "counts": _compressed_rle(a["segmentation"], height, width)}
            for a in annotations]


def _areas(rles: list[dict]) -> np.ndarray:
    # pycocotools' area() fails on lists longer than 255: measure in chunks
    return np.concatenate([mask_utils.area(rles[i:i + 255]) for i in range(0, len(rles), 255)]
                          + [np.zeros(0)]).astype(np.int64)


def _decode_all(rles: list[dict], height: int, width: int) -> np.ndarray:
    """(H, W, n) uint8 masks in one pycocotools call (its numpy-2 DeprecationWarning muted)."""
    if not rles:
        return np.zeros((height, width, 0), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rles)


def visible_areas(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """Pixels of each annotation still visible when painted largest first (segkit's label-map
    rule), computed on run-length encodings: area minus the overlap with everything painted
    after it."""
    rles = _rles(annotations, height, width)
    areas = _areas(rles)
    shown = areas.copy()
    covered = None  # union of the annotations painted after the current one
    for k in np.argsort(-areas, kind="stable")[::-1]:
        if covered is not None:
            hidden = mask_utils.area(mask_utils.merge([rles[k], covered], intersect=True))
            shown[k] -= int(hidden)
            covered = mask_utils.merge([rles[k], covered])
        else:
            covered = rles[k]
    return shown


def owner_map(annotations: list[dict], height: int, width: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Which annotation shows at each pixel (-1: none), painted largest first, and the full
    (H, W, n) masks. `owner == k` is annotation k's visible part."""
    rles = _rles(annotations, height, width)
    masks = _decode_all(rles, height, width)
    # segkit's rasteriser paints "classes" 0..255 with the label-map rule; painting annotation
    # number k + 1 as two bytes (low, then high) gives the winner for any number of annotations.
    segmentations = [a["segmentation"] for a in annotations]
    number = np.arange(1, len(annotations) + 1)
    low = rasterize(segmentations, number & 0xFF, height, width).astype(np.int32)
    high = rasterize(segmentations, number >> 8, height, width).astype(np.int32)
    return (high << 8) + low - 1, masks


def visible_mask(annotations: list[dict], k: int, height: int, width: int) -> np.ndarray:
    """Annotation k's visible part: its mask minus the annotations painted after it that
    overlap its box (only those are decoded)."""
    rles = _rles(annotations, height, width)
    areas = _areas(rles)
    boxes = mask_utils.toBbox(rles)  # x, y, w, h
    rank = np.empty(len(rles), np.int64)
    rank[np.argsort(-areas, kind="stable")] = np.arange(len(rles))
    x, y, w, h = boxes[k]
    later = [j for j in range(len(rles)) if rank[j] > rank[k]
             and boxes[j, 0] < x + w and x < boxes[j, 0] + boxes[j, 2]
             and boxes[j, 1] < y + h and y < boxes[j, 1] + boxes[j, 3]]
    mask = _decode_all([rles[k]], height, width)[:, :, 0].astype(bool)
    if later:
        mask &= ~_decode_all([rles[j] for j in later], height, width).any(axis=2)
    return mask
