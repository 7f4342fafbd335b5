"""Training data pipeline: images/s of one DataLoader worker, segkit against mmseg's stock pipeline.

Run from the repository root:

    .venv/bin/python benchmarks/bench_data.py [--images 32] [--samples 96] [--repeats 3]

Data: a synthetic sample (segkit.data.sample.make_sample) of 512x512 JPEGs with their label PNGs,
in a temporary folder. Each variant produces what one training sample is (PackSegInputs'
output) at 512x512 crops; it runs in this one process with one OpenCV and one torch thread, as
a DataLoader worker under mmengine does, so images/s here is images/s per worker.

- mmseg stock: mmseg's own `BaseSegDataset` over an img/ann folder layout (the same JPEG and
  PNG files) with the stock transforms LoadImageFromFile, LoadAnnotations, RandomResize
  (0.5-2.0), RandomCrop (cat_max_ratio 0.75), RandomFlip, [PhotoMetricDistortion],
  PackSegInputs: every sample decodes its JPEG and PNG.
- segkit: the train dataset of `segkit.train.training.build_config` (CocoSegDataset, its pipeline).
- segkit + cache: the same dataset with `segkit.train.data_cache.cached_pipeline`: images and labels
  decoded once into a memory-mapped cache at the training size (`build_cache`, timed apart),
  `FastRandomCrop` for the crop; the random transforms are otherwise the same.

Two augmentation sets are measured: the full one above (with PhotoMetricDistortion) and
segkit's default (flip, resize_crop). Variants run in turns (`--repeats` rounds) so a busy
machine slows them alike; the best round of each is reported. The script also checks that the
cached pipeline's samples equal the stock pipeline's pixel for pixel from the same random seed
(for images no larger than the training size, as here). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

FULL = ("flip", "resize_crop", "photometric")
DEFAULT = ("flip", "resize_crop")


def stock_pipeline(size: int, augment) -> list[dict]:
    """mmseg's usual ADE20K-style train pipeline with the same transforms as segkit's."""
    steps = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
             dict(type="RandomResize", scale=(size, size), ratio_range=(0.5, 2.0),
                  keep_ratio=True),
             dict(type="RandomCrop", crop_size=(size, size), cat_max_ratio=0.75),
             dict(type="RandomFlip", prob=0.5)]
    if "photometric" in augment:
        steps.append(dict(type="PhotoMetricDistortion"))
    return steps + [dict(type="PackSegInputs")]


def segkit_dataset_cfg(data: Path, size: int, augment, work_dir: Path) -> dict:
    """segkit's train dataset config, through its public config builder (adapt here only)."""
    from segkit.train.training import build_config

    cfg = build_config(data_root=str(data), fold=None, train_file=str(data / "train_all.json"),
                       val_file=str(data / "val.json"), model="efficientnet_lite0",
                       weights="none", image_size=size, crop_size=size, augment=augment,
                       work_dir=str(work_dir))
    return cfg["train_dataloader"]["dataset"]


def stock_layout(segkit_dataset, root: Path) -> Path:
    """img/ and ann/ folders (links to the same JPEG and label PNG files) for BaseSegDataset."""
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    for i in range(len(segkit_dataset)):
        info = segkit_dataset.get_data_info(i)
        stem = f"{i:05d}"
        os.symlink(info["img_path"], root / "img" / f"{stem}.jpg")
        os.symlink(info["seg_map_path"], root / "ann" / f"{stem}.png")
    return root


def rate(dataset, order: list[int]) -> float:
    start = time.perf_counter()
    for i in order:
        dataset[i]
    return len(order) / (time.perf_counter() - start)


def step_times(dataset, order: list[int]) -> dict[str, float]:
    """Milliseconds per sample in each transform of the dataset's pipeline."""
    totals: dict[str, float] = {}
    for i in order:
        results = dataset.get_data_info(i)
        for t in dataset.pipeline.transforms:
            start = time.perf_counter()
            results = t(results)
            name = type(t).__name__
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start
    return {k: v / len(order) * 1000 for k, v in totals.items()}


def same_samples(stock, cached, stock_index: dict[str, int], n: int) -> tuple[int, int]:
    """How many of n samples the cached pipeline makes identical to the stock one's from the
    same seed (image tensor and label)."""
    same = 0
    for i in range(n):
        path = os.path.realpath(cached.get_data_info(i)["img_path"])
        outs = []
        for ds, j in ((stock, stock_index[path]), (cached, i)):
            np.random.seed(1000 + i)
            random.seed(1000 + i)
            outs.append(ds[j])
        a, b = outs
        same += bool(torch.equal(a["inputs"], b["inputs"]) and torch.equal(
            a["data_samples"].gt_sem_seg.data, b["data_samples"].gt_sem_seg.data))
    return same, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="synthetic 512x512 images")
    parser.add_argument("--size", type=int, default=512, help="image_size = crop_size")
    parser.add_argument("--samples", type=int, default=96, help="samples per variant and round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="16 images, 32 samples, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.images, args.samples, args.repeats = 16, 32, 1

    import warnings

    warnings.filterwarnings("ignore")
    cv2.setNumThreads(0)  # what mmengine sets before it starts DataLoader workers
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    os.environ["SEGKIT_OUTPUTS"] = str(tmp / "outputs")  # label and image caches stay here
    try:
        from mmengine.registry import init_default_scope
        from mmseg.registry import DATASETS

        from segkit.data.sample import make_sample
        from segkit.train.data_cache import build_cache, cached_pipeline

        init_default_scope("mmseg")
        start = time.perf_counter()
        data = make_sample(tmp / "sample", n_train=args.images, n_test=1, size=args.size, seed=0)
        print(f"sample: {args.images} images of {args.size}x{args.size} "
              f"({time.perf_counter() - start:.1f} s)", flush=True)

        datasets: dict[tuple, dict] = {}
        cache_seconds = cache_mb = None
        for augment in (FULL, DEFAULT):
            cfg = segkit_dataset_cfg(data, args.size, augment, tmp / "run")
            segkit_ds = DATASETS.build(cfg)
            if cache_seconds is None:
                infos = [segkit_ds.get_data_info(i) for i in range(len(segkit_ds))]
                start = time.perf_counter()
                cache_dir = build_cache(infos, args.size)
                cache_seconds = time.perf_counter() - start
                cache_mb = sum(f.stat().st_size for f in cache_dir.iterdir()) / 2**20
                layout = stock_layout(segkit_ds, tmp / "stock")
            cached_ds = DATASETS.build(dict(cfg, pipeline=cached_pipeline(cfg["pipeline"],
                                                                          cache_dir)))
            stock_ds = DATASETS.build(dict(
                type="BaseSegDataset", data_root=str(layout),
                data_prefix=dict(img_path="img", seg_map_path="ann"), img_suffix=".jpg",
                seg_map_suffix=".png", metainfo=cfg["metainfo"],
                pipeline=stock_pipeline(args.size, augment)))
            datasets[augment] = {"mmseg stock": stock_ds, "segkit": segkit_ds,
                                 "segkit + cache": cached_ds}
        print(f"image cache: built in {cache_seconds:.2f} s "
              f"({cache_seconds / args.images * 1000:.1f} ms per image), {cache_mb:.1f} MB",
              flush=True)

        rng = np.random.default_rng(0)
        n = len(datasets[FULL]["segkit"])
        order = [int(i) for i in rng.integers(0, n, args.samples)]
        for variants in datasets.values():  # warm-up: page cache, lazy imports, memmaps
            for ds in variants.values():
                rate(ds, order[:8])
        results: dict[tuple, dict[str, list[float]]] = {
            a: {v: [] for v in vs} for a, vs in datasets.items()}
        for r in range(args.repeats):
            for augment, variants in datasets.items():
                for name, ds in variants.items():
                    results[augment][name].append(rate(ds, order))
            print(f"round {r + 1}: " + "; ".join(
                f"{'+'.join(a)} {name} {rs[-1]:.0f}/s" for a, v in results.items()
                for name, rs in v.items()), flush=True)

        stock = datasets[FULL]["mmseg stock"]
        stock_index = {os.path.realpath(stock.get_data_info(j)["img_path"]): j
                       for j in range(len(stock))}
        same, checked = same_samples(stock, datasets[FULL]["segkit + cache"], stock_index,
                                     min(16, n))
        profiles = {name: step_times(ds, order[:32]) for name, ds in datasets[FULL].items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{args.size}x{args.size} crops of {args.images} synthetic {args.size}x{args.size} "
          f"JPEGs, {args.samples} samples per variant, best of {args.repeats} rounds; one "
          f"worker (1 OpenCV thread); torch {torch.__version__}, cv2 {cv2.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| augmentations | variant | images/s per worker | ms / image | vs stock | all rounds |")
    print("|---|---|---:|---:|---:|---|")
    for augment, variants in results.items():
        base = max(variants["mmseg stock"])
        for name, rs in variants.items():
            best = max(rs)
            print(f"| {', '.join(augment)} | {name} | {best:.0f} | {1000 / best:.1f} | "
                  f"{best / base:.2f}x | {', '.join(f'{x:.0f}' for x in rs)} |")
    print("\nms per image in each step (full augmentations):\n")
    names = list(dict.fromkeys(k for p in profiles.values() for k in p))
    print("| step | " + " | ".join(profiles) + " |")
    print("|---|" + "---:|" * len(profiles))
    for step in names:
        print(f"| {step} | " + " | ".join(
            f"{p[step]:.2f}" if step in p else "" for p in profiles.values()) + " |")
    print(f"\ncached pipeline == stock pipeline from the same seed: {same} of {checked} samples "
          "identical (image and label)")
    for augment, variants in results.items():
        ratio = max(variants["segkit + cache"]) / max(variants["mmseg stock"])
        print(f"{'+'.join(augment)}: segkit + cache / mmseg stock = {ratio:.2f}x "
              f"(goal >= 2x: {'met' if ratio >= 2 else 'missed'})")


if __name__ == "__main__":
    main()
