"""Inference: a trained model loaded from its run folder, class probabilities with TTA (flips,
scales) and sliding windows, and the resizing and reductions to the submission's size.

Example:
    model = load_model("outputs/runs/efficientnet_lite0_fold0")
    probs = predict_probs(model, [image], flips=("h",), scales=(0.75, 1.0))
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segkit.core.checks import check_choice
from segkit.core.errors import SegkitError
from segkit.predict.options import REDUCTIONS
from segkit.results.runs import Run, checkpoint_problem
from segkit.submission.codec import SUBMISSION_SIZE


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(run: str | os.PathLike | Run | None = None, checkpoint: str = "best",
               config: str | os.PathLike | None = None, device: str | None = None):
    """An mmseg model in eval mode from a run folder (its config.py and best / last / an
    iteration's checkpoint), or from an explicit config + checkpoint path."""
    import segkit.train  # noqa: F401, I001  (first: compat's mmcv stand-in, then segkit's parts)
    from mmseg.apis import init_model

    if run is not None:
        run = Run.open(run)
        config = config or run.config_path
        ckpt = run.check_checkpoint(run.checkpoint(checkpoint))  # a cut file: one line
    else:
        if config is None:
            raise SegkitError("load_model needs a run folder or a config and a checkpoint")
        ckpt = Path(checkpoint)
        if not ckpt.exists():
            raise SegkitError(f"{ckpt}: checkpoint not found")
        problem = checkpoint_problem(ckpt)
        if problem:
            raise SegkitError(f"{ckpt}: the checkpoint does not read back ({problem}); pass "
                              "another checkpoint file")
    if not Path(config).exists():
        raise SegkitError(f"{config}: config not found")
    from segkit.train.compat import quiet_model_loading

    with quiet_model_loading():
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




def _to_probs(model, logits):
    import torch

    if type(model.decode_head).__name__ in ("Mask2FormerHead", "MaskFormerHead"):
        # mask-classification heads output class scores, not logits: normalise, don't softmax.
        # A barely trained model scores every class near 0 (1e-10 and less: "no object" wins),
        # so no floor but the smallest float: the probabilities still sum to 1 (uniform where
        # every score is 0).
        scores = logits.float().clamp_min(0)
        total = scores.sum(1, keepdim=True)
        return torch.where(total > 0, scores / total.clamp_min(torch.finfo(torch.float32).tiny),
                           1.0 / scores.shape[1])
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


def predict_probs(model, images: list[np.ndarray],
                  out_size: tuple[int, int] | None = SUBMISSION_SIZE,
                  flips: tuple[str, ...] = (), scales: tuple[float, ...] = (1.0,),
                  slide: tuple[int, int] | None = None, amp: bool = False) -> np.ndarray:
    """Class probabilities (N, C, H, W) float32 of RGB images of one size.

    flips: any of "h", "v" (each adds a flipped pass); scales: input scale factors, relative
    to the scale the model was validated at (`model.segkit_input_scale`, read from its
    config by `load_model`); the passes' probabilities are averaged. slide: (crop, stride) for sliding-window inference.
    out_size: probabilities are resized to it (area-averaged when shrinking), or kept at the
    image size when None.

    Example:
        probs = predict_probs(model, [image], flips=("h",), scales=(0.75, 1.0))
    """
    import torch
    import torch.nn.functional as F

    from segkit.train.compat import autocast

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

    check_choice("reduction", method, REDUCTIONS[1:])
    if method == "nearest":
        return cv2.resize(label, (out_size[1], out_size[0]), interpolation=cv2.INTER_NEAREST)
    h, w = label.shape
    if (h, w) != (2 * out_size[0], 2 * out_size[1]):
        raise SegkitError(f"max2x2 needs labels of exactly twice {out_size}, got {(h, w)}")
    return label.reshape(out_size[0], 2, out_size[1], 2).max(axis=(1, 3))
