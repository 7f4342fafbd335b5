"""How much does each validation overstate? The same CamVid model trained and validated on
image-level folds and on sequence-aware folds (issue 19).

Writes both fold sets (image-level: 5 folds, each image its own group; sequence-aware: 3 folds,
one CamVid sequence each), trains pipeline.yaml's model (efficientnet_lite0 at 320x240, 224
crops, 2,400 iterations, balanced class weights) on the chosen folds and prints a markdown table
of validation mIoU over the 11 classes (void / Background left out) and over all 12 labels.

    SEGKIT_OUTPUTS=outputs/camvid_folds .venv/bin/python benchmarks/camvid/compare_folds.py \
        --data-root DATA [--runs image:0 sequence:1 sequence:0] [--num-workers 0]

The same command runs on a GPU server (it picks the device itself); the figures in
benchmarks/README.md say where they were measured.
"""

from __future__ import annotations

import argparse
import time

from segkit.coco.files import load_coco
from segkit.core.paths import outputs_dir
from segkit.folds.split import split_file
from segkit.results.runs import Run
from segkit.train.training import run

SCHEMES = {
    "image": dict(n_splits=5, group_by=None),
    "sequence": dict(n_splits=3, group_by=r"regex:^(\w+?)_"),  # the file name's sequence prefix
}
MODEL = dict(image_size=320, crop_size=224, batch_size=4, iters=2400, val_interval=600, lr=0.002,
             warmup_iters=100, class_weights="balanced", amp=False, weights="auto",
             model="efficientnet_lite0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--runs", nargs="+", default=["image:0", "sequence:1"],
                        help="SCHEME:FOLD pairs (schemes: image, sequence)")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--iters", type=int, default=MODEL["iters"])
    args = parser.parse_args()

    folders = {}
    for scheme, options in SCHEMES.items():
        folders[scheme] = outputs_dir() / f"splits_{scheme}"
        split_file(f"{args.data_root}/train_all.json", folders[scheme], seed=42, by="pixels",
                   **options)
    rows = []
    for item in args.runs:
        scheme, fold = item.split(":")
        name = f"lite0_320_{scheme}_fold{fold}"
        start = time.time()
        params = dict(MODEL, iters=args.iters, val_interval=min(MODEL["val_interval"], args.iters))
        result = run(data_root=args.data_root, splits_dir=str(folders[scheme]), fold=int(fold),
                     run_name=name, num_workers=args.num_workers, **params)
        iou = result.per_class_iou.drop(index="Background", errors="ignore")
        val_images = len(load_coco(Run(result.work_dir).fold_files()[1]).images)
        rows.append((scheme, fold, val_images, iou.mean(), result.best_miou,
                     (time.time() - start) / 60))
        print(f"{name}: mIoU 11 classes {iou.mean():.4f}, 12 labels {result.best_miou:.4f}",
              flush=True)
    print("\n| folds | fold | val images | val mIoU, 11 classes | val mIoU, 12 labels | minutes |")
    print("|---|---:|---:|---:|---:|---:|")
    for scheme, fold, images, m11, m12, minutes in rows:
        print(f"| {scheme} | {fold} | {images} | {m11:.3f} | {m12:.3f} | {minutes:.1f} |")


if __name__ == "__main__":
    main()
