"""Experiment tracking: where a run's scalars and pictures go (mmengine's vis backends:
the run folder, TensorBoard, and Weights & Biases when asked), and the validation pictures
(segkit's SegValVisualizationHook, mmseg's SegVisualizationHook drawing the same images at
each validation: each image with its labels beside its prediction).

W&B runs offline (`mode="offline"`, synchronised later with `wandb sync`) when there is no
API key (WANDB_API_KEY, or `wandb login`'s entry in ~/.netrc) or api.wandb.ai cannot be
reached; WANDB_MODE set by the user is left to decide.

Example:
    >>> vis_backends(dict(wandb=False))[1]["type"]
    'TensorboardVisBackend'
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path


def wandb_online(timeout: float = 2.0) -> bool:
    """Whether W&B can log online here: an API key, and api.wandb.ai answering."""
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (
        netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace"))
    if not has_key:
        return False
    try:
        with socket.create_connection(("api.wandb.ai", 443), timeout=timeout):
            return True
    except OSError:
        return False


def vis_backends(p: dict, run_name: str = "") -> list[dict]:
    """The visualizer's backends: the run folder's vis_data, TensorBoard, and W&B with
    `wandb` (project `wandb_project`, run `wandb_run` or the run folder's name)."""
    backends = [dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]
    if p.get("wandb"):
        init = dict(project=p.get("wandb_project") or "segkit",
                    name=p.get("wandb_run") or run_name or None)
        if "WANDB_MODE" not in os.environ and not wandb_online():
            init["mode"] = "offline"
        backends.append(dict(type="WandbVisBackend", init_kwargs=init))
    return backends


def visualization_hook(vis_images: int, val_images: int) -> dict:
    """The hook drawing about `vis_images` of the `val_images` validation images (evenly
    spread, the same ones each time) at every validation; 0 draws none."""
    if vis_images <= 0 or val_images <= 0:
        return dict(type="SegValVisualizationHook", draw=False)
    interval = max(1, math.ceil(val_images / min(vis_images, val_images)))
    return dict(type="SegValVisualizationHook", draw=True, interval=interval)
