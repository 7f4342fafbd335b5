"""Inference cost of flip TTA against plain inference, same model and images, same run.

    .venv/bin/python benchmarks/bench_predict.py [--images 24] [--size 512]

Target (issue #4): flip TTA <= 2.1x plain inference. segkit runs each flipped view as its own
pass over the batch (stacking the views into one bigger batch measured 2.4x on this CPU), so
the cost is the network's time for twice the pixels and nothing more.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from segkit.coco.files import load_coco, read_image
    from segkit.data.sample import make_sample
    from segkit.predict.inference import predict_probs
    from segkit.train import compat
    from segkit.train.models import model_config

    compat.apply()
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_sample(Path(tmp) / "s", n_train=args.images, n_test=1, size=args.size)
        coco = load_coco(root / "train_all.json")
        images = [read_image(root, img) for img in coco.images]
    cfg, _ = model_config("efficientnet_lite0", 11, weights="backbone")
    model = MODELS.build(cfg).eval()
    model.dataset_meta = {}

    def timed(**kw):
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            for i in range(0, len(images), 4):
                predict_probs(model, images[i:i + 4], **kw)
            best = min(best, time.perf_counter() - start)
        return best

    predict_probs(model, images[:4])  # warm-up
    plain = timed()
    flip = timed(flips=("h",))
    flip2 = timed(flips=("h", "v"))
    ms = lambda t: 1000 * t / len(images)  # noqa: E731
    print(f"torch threads: {torch.get_num_threads()}, {len(images)} images of {args.size}px, "
          f"batch 4, efficientnet_lite0, CPU fp32, best of {args.repeats}")
    print("| inference | ms / image | vs plain |")
    print("|---|---:|---:|")
    for name, t in (("plain", plain), ("flip TTA (h)", flip), ("flip TTA (h, v)", flip2)):
        print(f"| {name} | {ms(t):.1f} | {t / plain:.2f}x |")
    assert np.isfinite([plain, flip, flip2]).all()


if __name__ == "__main__":
    main()
