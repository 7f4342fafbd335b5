"""Pseudo labels: confident test predictions become an extra training source.

From the stored probabilities of one prediction folder (or the weighted mean of several: a soft
vote), each test image gets a full-size label map: the argmax class where the top probability
reaches `threshold`, the ignore index (255) elsewhere. The stored 256x256 probabilities are
resized to the image's size first (bilinear when growing, see `segkit.predict.inference.resize_probs`),
then argmax and confidence are taken, so the label maps are as sharp as the probabilities allow.

A pseudo-label folder (`outputs/pseudo/<name>/`) holds:
    labels/<image_id>.png  uint8 class indices, 255 = not confident enough (ignored by the loss)
    pseudo.json            COCO-style: the images, each with "seg_map": "labels/<id>.png", the
                           categories, no annotations, and "segkit": {"image_root": ...}, the
                           folder the file names are relative to (relative to this folder when
                           possible), so `segkit.train.sources.resolve_source` finds the images
    report.csv             per class: predicted pixels, kept pixels, share kept, share of all
    meta.json              the inputs, weights and threshold

Example:
    result = pseudo_labels(["outputs/predictions/lite0_fold0/test"], "outputs/pseudo/t09",
                           threshold=0.9)
    run(fold=0, extra_train_files=[result.coco_path])
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.core.classes import IGNORE_INDEX, ClassTable
from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import atomic_folder
from segkit.results.predictions import PredictionSet, folder_weights
from segkit.results.runs import Run

# Probabilities are stored in steps of 1/255 and resizing sums float32 weights: a pixel whose
# top probability equals the threshold up to this rounding counts as reaching it.
TOLERANCE = 1e-6


@dataclass
class PseudoResult:
    """What `pseudo_labels` wrote: the folder, its COCO file, the per-class report, and each
    image's share of kept (labelled) pixels."""

    out_dir: Path
    coco_path: Path
    report: pd.DataFrame
    kept_share: dict[int, float] = field(default_factory=dict)

    @property
    def overall_kept(self) -> float:
        """Share of all pixels that got a label (not 255)."""
        return float(self.report["kept_pixels"].sum() / max(self.report["predicted_pixels"].sum(),
                                                            1))


def pseudo_dir(run_name: str, threshold: float, name: str = "") -> Path:
    """outputs/pseudo/<name>, by default <run>_t<threshold> (06_pseudo_label's folder).

    Example:
        >>> pseudo_dir("lite0_fold0", 0.9).name
        'lite0_fold0_t0.9'
    """
    from segkit.core.paths import outputs_dir

    return outputs_dir() / "pseudo" / (name or f"{run_name}_t{threshold:g}")


def check_threshold(threshold) -> float:
    """A confidence threshold in (0, 1], as float; anything else is a ParameterError."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
        raise ParameterError(f"threshold must be a number in (0, 1], got {threshold!r}")
    value = float(threshold)
    if not 0.0 < value <= 1.0:  # also rejects nan
        raise ParameterError(f"threshold must lie in (0, 1] (e.g. 0.9), got {threshold!r}")
    return value


def label_from_probs(probs: np.ndarray, threshold: float) -> np.ndarray:
    """(C, H, W) probabilities -> uint8 (H, W): argmax (lowest class on ties) where the top
    probability reaches `threshold`, IGNORE_INDEX elsewhere.

    Example:
        >>> p = np.array([[[0.95, 0.5]], [[0.05, 0.5]]], np.float32)
        >>> label_from_probs(p, 0.9)
        array([[  0, 255]], dtype=uint8)
    """
    threshold = check_threshold(threshold)
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ParameterError(f"probabilities must be (classes, H, W), got shape {probs.shape}")
    if probs.shape[0] >= IGNORE_INDEX:
        raise ParameterError(f"at most {IGNORE_INDEX - 1} classes fit a label map with the "
                             f"ignore index {IGNORE_INDEX}, got {probs.shape[0]}")
    label = probs.argmax(0).astype(np.uint8)
    confidence = probs.max(0)
    label[confidence < threshold - TOLERANCE] = IGNORE_INDEX
    return label


def _image_root_entry(image_root: Path, out_dir: Path) -> str:
    """`image_root` relative to `out_dir` where a relative path exists, else absolute."""
    absolute = image_root.resolve()
    try:
        return Path(os.path.relpath(absolute, out_dir.resolve())).as_posix()
    except ValueError:  # another drive (Windows): no relative path
        return absolute.as_posix()


def _source_coco(folders, test_json, data_root):
    """The COCO file the predictions were made from, checked against the predictions, and the
    folder its file names are relative to."""
    from segkit.coco.files import load_coco

    if test_json is None:
        source = folders.folders[0].meta.get("source")
        if source is None:
            raise ParameterError(f"{folders.dirs[0] / 'meta.json'} does not name the COCO file "
                                 "it was predicted from: pass test_json")
        test_json = source
    coco = load_coco(test_json)
    root = Path(data_root) if data_root else Path(test_json).parent
    if not root.is_dir():
        raise ParameterError(f"data_root {str(root)!r} is not a folder")
    classes = ClassTable.for_coco(coco.categories)
    if list(classes.names) != list(folders.classes):
        raise SegkitError(f"{folders.dirs[0] / 'meta.json'}: predicted classes "
                          f"{folders.classes} differ from {coco.path}'s {list(classes.names)}")
    by_id = coco.image_by_id
    for image in folders.images:
        entry = by_id.get(image["id"])
        if entry is None:
            raise SegkitError(f"{folders.dirs[0] / 'meta.json'}: image id {image['id']} "
                              f"({image.get('file_name')}) is not in {coco.path}")
        for key in ("file_name", "width", "height"):
            if key in image and image[key] != entry[key]:
                raise SegkitError(f"{folders.dirs[0] / 'meta.json'}: image id {image['id']} has "
                                  f"{key} {image[key]!r}, {coco.path} says {entry[key]!r}")
    return coco, root


def _mean_probs(folders: PredictionSet, image_id, weights) -> np.ndarray:
    """The weighted mean of the folders' probabilities of one image, float32 (C, H, W)."""
    total = folders.weighted_sum(image_id, weights)
    return (total / (folder_weights(weights, len(folders.dirs))[0].sum() * 255.0)
            ).astype(np.float32)


def pseudo_labels(pred_dirs: str | os.PathLike | Sequence[str | os.PathLike],
                  out_dir: str | os.PathLike, threshold: float = 0.9,
                  weights: Sequence[float] | None = None,
                  test_json: str | os.PathLike | None = None,
                  data_root: str | os.PathLike | None = None,
                  progress: bool = False) -> PseudoResult:
    """Write a pseudo-label folder (see the module docstring) from prediction folders.

    pred_dirs: one prediction folder or several (their weighted mean is used; they must hold
    the same images and classes). threshold: a pixel is labelled when its top probability is
    >= threshold, in (0, 1]. test_json: the COCO file predicted (default: the one the first
    folder's meta.json names); data_root: the folder its file names are relative to (default:
    the COCO file's folder).

    Everything is checked before anything is written; the folder is built beside `out_dir`
    and moved into place at the end, so an error leaves `out_dir` as it was.
    """
    from tqdm import tqdm

    from segkit.coco.files import write_coco, write_png
    from segkit.core.paths import write_table, write_text_atomic
    from segkit.predict.inference import resize_probs
    from segkit.submission.vote import check_weights

    threshold = check_threshold(threshold)
    dirs = [pred_dirs] if isinstance(pred_dirs, (str, os.PathLike)) else list(pred_dirs)
    folders = PredictionSet.open(dirs, minimum=1)
    weight_array = check_weights(weights, len(folders.dirs), "prediction folders")
    coco, root = _source_coco(folders, test_json, data_root)
    num_classes = len(folders.classes)
    out_dir = Path(out_dir)
    by_id = coco.image_by_id

    predicted = np.zeros(num_classes, np.int64)
    kept = np.zeros(num_classes, np.int64)
    top = 0.0  # the highest top probability of any pixel: what a threshold must stay under
    kept_share: dict[int, float] = {}
    images = []
    with atomic_folder(out_dir) as building:
        for image in tqdm(folders.images, desc="pseudo labels", disable=not progress):
            entry = by_id[image["id"]]
            probs = _mean_probs(folders, image["id"], weight_array)
            full = resize_probs(probs, (entry["height"], entry["width"]))
            label = label_from_probs(full, threshold)
            argmax = full.argmax(0)
            top = max(top, float(full.max()))
            predicted += np.bincount(argmax.ravel(), minlength=num_classes)
            kept += np.bincount(label[label != IGNORE_INDEX].ravel(), minlength=num_classes)
            kept_share[image["id"]] = float((label != IGNORE_INDEX).mean())
            seg_map = f"labels/{image['id']}.png"
            write_png(building / seg_map, label)
            images.append({"id": entry["id"], "file_name": entry["file_name"],
                           "width": entry["width"], "height": entry["height"],
                           "seg_map": seg_map})
        total = predicted.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            report = pd.DataFrame({
                "predicted_pixels": predicted, "kept_pixels": kept,
                "share_kept": np.where(predicted > 0, kept / np.maximum(predicted, 1), np.nan),
                "share_of_all": kept / max(total, 1)}, index=pd.Index(folders.classes,
                                                                       name="class"))
        write_table(report, building / "report.csv")
        write_text_atomic(building / "meta.json", json.dumps({
            "inputs": [str(d) for d in folders.dirs], "weights": weight_array.tolist(),
            "threshold": threshold, "ignore_index": IGNORE_INDEX, "source": str(coco.path),
            "kept_share": float(kept.sum() / max(total, 1)), "kept_pixels": int(kept.sum()),
            "pixels": int(total), "max_confidence": top}, indent=1))
        data = {"info": {"description": f"segkit pseudo labels (threshold {threshold})"},
                "images": images, "annotations": [], "categories": coco.categories,
                "segkit": {"image_root": _image_root_entry(root, out_dir)}}
        write_coco(data, building / "pseudo.json")
    return PseudoResult(out_dir, out_dir / "pseudo.json", report, kept_share)


def check_pseudo_kept(pseudo_files: Sequence[str | os.PathLike]) -> None:
    """Refuse pseudo-label files whose threshold kept no pixel (every label 255): a second
    round would train on nothing new. Reads each file's meta.json (files of other origin,
    without one, pass); a ParameterError gives the share kept and the highest confidence.

    Example:
        check_pseudo_kept(["outputs/pseudo/lite0_fold0_t0.9/pseudo.json"])
    """
    for path in pseudo_files:
        meta_path = Path(path).parent / "meta.json"
        if Path(path).name != "pseudo.json" or not meta_path.is_file():
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        kept = meta.get("kept_pixels")
        if kept is None:  # written before the counts were: the share alone
            kept = 1 if meta.get("kept_share", 1) > 0 else 0
        if kept == 0:
            top = meta.get("max_confidence")
            below = f" (the most confident pixel reached {top:.3f}: a threshold at or " \
                    f"below it keeps some)" if top is not None else ""
            raise ParameterError(
                f"{path}: threshold {meta.get('threshold')} kept 0.0% of the "
                f"{meta.get('pixels', '?')} test pixels{below}; a second round would train on "
                "no pseudo label: lower the threshold")


def show_examples(result: PseudoResult, classes: ClassTable | None = None,
                  image_ids: Sequence[int] | None = None, count: int = 3):
    """Image, pseudo labels over it (ignored pixels white) and the ignore mask, one row per
    image: by default the images with the lowest, middle and highest share of kept pixels."""
    from segkit.coco.files import load_coco, read_image, read_label
    from segkit.train.sources import resolve_source
    from segkit.viz import legend_handles, overlay, show_grid

    ann_file, root = resolve_source(result.coco_path)
    coco = load_coco(ann_file)
    classes = classes or ClassTable.for_coco(coco.categories)
    if image_ids is None:
        ranked = sorted(result.kept_share, key=lambda i: (result.kept_share[i], i))
        if not ranked:
            raise ParameterError(f"{result.coco_path}: no images to show")
        picks = np.linspace(0, len(ranked) - 1, min(count, len(ranked))).round().astype(int)
        image_ids = [ranked[k] for k in dict.fromkeys(picks.tolist())]
    coco.check_image_ids(image_ids, result.coco_path)
    rows, titles, present = [], [], set()
    for image_id in image_ids:
        info = coco.image_by_id[image_id]
        image = read_image(root, info)
        label = read_label(ann_file.parent / info["seg_map"])
        shown = overlay(image, label, classes, alpha=0.6)
        shown[label == IGNORE_INDEX] = 255
        ignored = np.where(label == IGNORE_INDEX, 255, 0).astype(np.uint8)
        rows.append([image, shown, np.dstack([ignored] * 3)])
        share = float((label != IGNORE_INDEX).mean())
        titles.append(f"{info['file_name']}\n{share:.0%} labelled")
        present.update(np.unique(label).tolist())
    fig = show_grid(rows, titles=["image", "pseudo labels (white: ignored)", "ignored pixels"],
                    row_titles=titles)
    fig.legend(handles=legend_handles(classes, sorted(present)), loc="lower center",
               ncol=min(6, len(present)), frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.subplots_adjust(bottom=0.12 if len(rows) < 3 else 0.06)
    return fig


# ---------------------------------------------------------------------------------------------
# Round 2
# ---------------------------------------------------------------------------------------------


def round_comparison(run_dirs: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """Per-class validation IoU of each run's best checkpoint side by side (from its logs),
    mIoU last, and the change from the first run to each other one.

    Example:
        round_comparison({"round 1": "outputs/runs/a", "round 2": "outputs/runs/a_pseudo"})
    """
    if not run_dirs:
        raise ParameterError("round_comparison needs at least one run folder")
    columns = {}
    for name, run_dir in run_dirs.items():
        result = Run.open(run_dir).summary()
        if not np.isfinite(result.best_miou):
            raise SegkitError(f"{run_dir}: no validation results in the run's logs")
        series = result.per_class_iou.astype(float)
        series.loc["mIoU"] = result.best_miou
        columns[name] = series
    table = pd.DataFrame(columns)
    names = list(columns)
    for name in names[1:]:
        table[f"{name} - {names[0]}"] = table[name] - table[names[0]]
    return table
