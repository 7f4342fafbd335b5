"""Inference: TTA, sliding windows, probabilities at submission size, stored compactly.

A prediction folder (`outputs/predictions/<run>/<split>/`) holds:
    meta.json            classes, size, split, and the COCO image entries in order
    probs/<image_id>.npy uint8 (C, H, W): class probabilities quantised as round(p * 255)
    submission.csv       for the test split
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.errors import SegkitError
from segkit.paths import atomic_path, read_json_file, write_text_atomic

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
    return read_json_file(Path(pred_dir) / "meta.json",
                          f"{pred_dir}: not a prediction folder (no meta.json)")


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

REDUCTIONS = ("probs", "nearest", "max2x2")


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_checkpoint(run_dir: str | os.PathLike, checkpoint: str = "best") -> Path:
    """`best` / `last` / a file name of a run folder -> the checkpoint path."""
    from segkit.train import best_checkpoint, last_checkpoint

    run_dir = Path(run_dir)
    if checkpoint in ("best", "last"):
        path = (best_checkpoint if checkpoint == "best" else last_checkpoint)(run_dir)
        if path is None and checkpoint == "best":
            path = last_checkpoint(run_dir)
    else:
        path = Path(checkpoint) if Path(checkpoint).exists() else run_dir / checkpoint
        path = path if path.exists() else None
    if path is None:
        raise SegkitError(f"{run_dir}: no checkpoint ({checkpoint}) found in the run folder")
    return path


def load_model(run_dir: str | os.PathLike | None = None, checkpoint: str = "best",
               config: str | os.PathLike | None = None, device: str | None = None):
    """An mmseg model in eval mode from a run folder (its config.py and best/last checkpoint),
    or from an explicit config + checkpoint path."""
    from segkit.train import register_dataset

    register_dataset()
    from mmseg.apis import init_model

    if run_dir is not None:
        config = config or Path(run_dir) / "config.py"
        ckpt = resolve_checkpoint(run_dir, checkpoint)
    else:
        if config is None:
            raise SegkitError("load_model needs a run folder or a config and a checkpoint")
        ckpt = Path(checkpoint)
        if not ckpt.exists():
            raise SegkitError(f"{ckpt}: checkpoint not found")
    if not Path(config).exists():
        raise SegkitError(f"{config}: config not found")
    model = init_model(str(config), str(ckpt), device=pick_device(device))
    model.eval()
    model.segkit_checkpoint = str(Path(ckpt).resolve())  # meta.json means it from any folder
    model.segkit_input_scale = validation_scale(model.cfg)
    return model


def validation_scale(cfg) -> tuple[int, int] | None:
    """The (w, h) box the config's validation pipeline resizes images into (keeping their
    aspect ratio), or None: prediction must see images at the scale the model was trained
    and validated at, not at the file's size."""
    loader = cfg.get("val_dataloader") or cfg.get("test_dataloader") or {}
    for step in (loader.get("dataset") or {}).get("pipeline", []):
        if step.get("type") == "Resize" and step.get("keep_ratio", False) and step.get("scale"):
            scale = step["scale"]
            return (int(scale), int(scale)) if isinstance(scale, int) else tuple(map(int, scale))
    return None


def model_classes(model) -> list[str]:
    meta = getattr(model, "dataset_meta", None) or {}
    classes = meta.get("classes")
    if classes:
        return list(classes)
    return [str(i) for i in range(model.decode_head.num_classes)]


def check_model_classes(model, class_names, source: str = "the data") -> None:
    n_model = model.decode_head.num_classes
    if n_model != len(class_names):
        raise SegkitError(f"checkpoint {getattr(model, 'segkit_checkpoint', '?')} predicts "
                          f"{n_model} classes but {source} has {len(class_names)}: "
                          f"{', '.join(class_names)}")


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------

def _to_probs(model, logits):
    import torch

    if type(model.decode_head).__name__ in ("Mask2FormerHead", "MaskFormerHead"):
        # mask-classification heads output class scores, not logits: normalise, don't softmax
        scores = logits.float().clamp_min(0)
        return scores / scores.sum(1, keepdim=True).clamp_min(1e-6)
    return torch.softmax(logits.float(), dim=1)


def _infer(model, batch, slide):
    """Probabilities (N, C, h, w) of a normalised batch at its own size."""
    h, w = batch.shape[-2:]
    metas = [dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                  padding_size=[0, 0, 0, 0]) for _ in range(len(batch))]
    saved = model.test_cfg
    if slide:
        crop, stride = slide
        model.test_cfg = type(saved)(mode="slide", crop_size=(crop, crop), stride=(stride, stride))
    try:
        return _to_probs(model, model.inference(batch, metas))
    finally:
        model.test_cfg = saved


def predict_probs(model, images: list[np.ndarray], out_size: tuple[int, int] | None = (256, 256),
                  flips: tuple[str, ...] = (), scales: tuple[float, ...] = (1.0,),
                  slide: tuple[int, int] | None = None, amp: bool = False) -> np.ndarray:
    """Class probabilities (N, C, H, W) float32 of RGB images of one size.

    flips: any of "h", "v" (each adds a flipped pass); scales: input scale factors, relative
    to the scale the model was validated at (`model.segkit_input_scale`, read from its
    config by `load_model`); the passes' probabilities are averaged. slide: (crop, stride) for sliding-window inference.
    out_size: probabilities are resized to it (area-averaged when shrinking), or kept at the
    image size when None.

    Example:
        >>> probs = predict_probs(model, [image], flips=("h",), scales=(0.75, 1.0))  # doctest: +SKIP
    """
    import torch
    import torch.nn.functional as F

    from segkit.compat import autocast

    device = next(model.parameters()).device
    pre = model.data_preprocessor
    x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float()
    x = (x - pre.mean) / pre.std
    h, w = x.shape[-2:]
    box = getattr(model, "segkit_input_scale", None)
    # the scale validation used (mmseg's keep-ratio Resize into the box), times each TTA scale
    base = min(max(box) / max(h, w), min(box) / min(h, w)) if box else 1.0
    total = None
    passes = 0
    with torch.no_grad(), autocast(device.type, enabled=amp):
        for scale in scales:
            size = (max(1, round(h * base * scale)), max(1, round(w * base * scale)))
            xs = x if size == (h, w) else F.interpolate(
                x, size=size, mode="bilinear", align_corners=False)
            for f in ("",) + tuple(flips):
                # one pass per view: stacking the views into one bigger batch measured slower
                # on the CPU (2.4x instead of 2x for one flip at 512 px)
                view = xs.flip(-1) if f == "h" else xs.flip(-2) if f == "v" else xs
                p = _infer(model, view, slide)
                p = p.flip(-1) if f == "h" else p.flip(-2) if f == "v" else p
                if p.shape[-2:] != (h, w):
                    p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
                total = p if total is None else total + p
                passes += 1
    probs = (total / passes).float()
    if out_size is not None:
        probs = _resize(probs, out_size)
    return probs.cpu().numpy()


def _resize(probs, out_size):
    """Resize (N, C, h, w) probabilities: area-averaged when shrinking (the sound way to
    reduce 512 to 256 before the argmax), bilinear when growing."""
    import torch.nn.functional as F

    h, w = probs.shape[-2:]
    if (h, w) == tuple(out_size):
        return probs
    if out_size[0] <= h and out_size[1] <= w:
        return F.interpolate(probs, size=tuple(out_size), mode="area")
    return F.interpolate(probs, size=tuple(out_size), mode="bilinear", align_corners=False)


def resize_probs(probs: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) probabilities resized to out_size (see `predict_probs`)."""
    import torch

    return _resize(torch.from_numpy(probs)[None], out_size)[0].numpy()


def reduce_label(label: np.ndarray, out_size: tuple[int, int], method: str = "nearest"
                 ) -> np.ndarray:
    """Shrink a full-size label map: "nearest" or "max2x2" (max class id of each 2x2 block,
    as some teams did; needs an exact 2x size)."""
    import cv2

    if method == "nearest":
        return cv2.resize(label, (out_size[1], out_size[0]), interpolation=cv2.INTER_NEAREST)
    if method == "max2x2":
        h, w = label.shape
        if (h, w) != (2 * out_size[0], 2 * out_size[1]):
            raise SegkitError(f"max2x2 needs labels of exactly twice {out_size}, got {(h, w)}")
        return label.reshape(out_size[0], 2, out_size[1], 2).max(axis=(1, 3))
    raise SegkitError(f"reduction {method!r}; allowed: {', '.join(REDUCTIONS)}")


def predict_dataset(model, coco, data_root, out_dir, *, split: str = "test",
                    out_size: tuple[int, int] = (256, 256), reduction: str = "probs",
                    flips: tuple[str, ...] = (), scales: tuple[float, ...] = (1.0,),
                    slide: tuple[int, int] | None = None, amp: bool = False,
                    batch_size: int = 4, save_full_labels: bool = False,
                    progress: bool = True) -> Path:
    """Predict every image of a COCO file into a prediction folder (see the module docstring).

    Writes probs at `out_size` for each image, `labels/<id>.png` (full size) when asked, the
    submission-size label maps' CSV for the test split, and meta.json last, so a folder with a
    meta.json is complete.
    """
    from tqdm.auto import tqdm

    from segkit.coco import read_image, write_png

    if reduction not in REDUCTIONS:
        raise SegkitError(f"reduction {reduction!r}; allowed: {', '.join(REDUCTIONS)}")
    classes = model_classes(model)
    out_dir = Path(out_dir)
    (out_dir / "probs").mkdir(parents=True, exist_ok=True)
    for img in coco.images:  # fail before predicting anything if an image is missing
        if not (Path(data_root) / img["file_name"]).exists():
            raise SegkitError(f"{Path(data_root) / img['file_name']}: image file missing "
                              f"(image id {img['id']} of {coco.path})")
    need_full = save_full_labels or reduction != "probs"
    small_labels = {}
    batches, current = [], []
    for img in coco.images:
        if current and (len(current) == batch_size or
                        (current[0]["height"], current[0]["width"]) != (img["height"], img["width"])):
            batches.append(current)
            current = []
        current.append(img)
    if current:
        batches.append(current)
    bar = tqdm(total=len(coco.images), desc=f"predict {split}", disable=not progress)
    for batch in batches:
        images = [read_image(data_root, img) for img in batch]
        full = predict_probs(model, images, None if need_full else out_size, flips, scales,
                             slide, amp)
        for img, p in zip(batch, full):
            small = p
            if need_full:
                label = p.argmax(0).astype(np.uint8)
                if save_full_labels:
                    write_png(out_dir / "labels" / f"{img['id']}.png", label)
                small = resize_probs(p, out_size)
            save_probs(out_dir, img["id"], small)
            small_labels[img["id"]] = (small.argmax(0).astype(np.uint8) if reduction == "probs"
                                       else reduce_label(label, out_size, reduction))
        bar.update(len(batch))
    bar.close()
    if split == "test":
        from segkit.submission import write_submission

        write_submission(out_dir / "submission.csv", [img["file_name"] for img in coco.images],
                         (small_labels[img["id"]] for img in coco.images),
                         num_classes=len(classes), size=tuple(out_size))
    write_prediction_meta(out_dir, coco.images, classes, out_size, split,
                          checkpoint=getattr(model, "segkit_checkpoint", None),
                          flips=list(flips), scales=list(scales),
                          slide=list(slide) if slide else None, reduction=reduction,
                          source=str(Path(coco.path).resolve()))
    return out_dir


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

@dataclass
class Evaluation:
    """Validation results of a prediction folder against its COCO file."""

    confusion: np.ndarray
    miou: float
    per_class: pd.DataFrame  # IoU, accuracy (recall) and truth pixels per class
    per_image: pd.DataFrame  # image_id, file_name, mIoU; lowest first: label-noise candidates


def run_data(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(data root, validation COCO file) a run was trained with, from its params.json."""
    from segkit.sample import resolve_data_root
    from segkit.train import fold_files, run_parameters

    params = run_parameters(run_dir)
    root = resolve_data_root(params.get("data_root", ""))
    if params.get("val_file"):
        return root, Path(params["val_file"])
    return root, fold_files(int(params.get("fold", 0)), params.get("splits_dir"))[1]


def evaluate(pred_dir: str | os.PathLike, coco, classes=None) -> Evaluation:
    """Score a prediction folder of `coco`'s images: at full size when the folder holds
    full-size label maps (labels/), else at the stored probabilities' size against the truth
    shrunk by nearest neighbour."""
    import cv2

    from segkit.classes import ClassTable
    from segkit.coco import cached_label_maps, read_label
    from segkit.metrics import ConfusionMatrix, miou, per_class_accuracy, per_class_iou

    pred_dir = Path(pred_dir)
    meta = read_prediction_meta(pred_dir)
    classes = classes or ClassTable.for_coco(coco.categories)
    if list(meta["classes"]) != list(classes.names):
        raise SegkitError(f"{pred_dir}: predicted classes {meta['classes']} differ from "
                          f"{coco.path}'s {list(classes.names)}")
    truth_paths = cached_label_maps(coco, classes)
    total = ConfusionMatrix(classes.num_classes)
    rows = []
    for img in coco.images:
        truth = read_label(truth_paths[img["id"]])
        full = pred_dir / "labels" / f"{img['id']}.png"
        if full.exists():
            pred = read_label(full)
        else:
            pred = load_probs(pred_dir, img["id"]).argmax(0).astype(np.uint8)
            truth = cv2.resize(truth, pred.shape[::-1], interpolation=cv2.INTER_NEAREST)
        cm = total.update(pred, truth)
        rows.append((img["id"], img["file_name"], miou(cm)))
    cm = total.matrix
    per_class = pd.DataFrame({"IoU": per_class_iou(cm), "accuracy": per_class_accuracy(cm),
                              "truth_pixels": cm.sum(1)}, index=list(classes.names))
    per_image = pd.DataFrame(rows, columns=["image_id", "file_name", "mIoU"]).sort_values(
        ["mIoU", "image_id"]).reset_index(drop=True)
    return Evaluation(cm, miou(cm), per_class, per_image)
