"""Time the data stages on real data: pixel statistics, the two split variants, copy-paste.

Run from the repository root:

    .venv/bin/python benchmarks/bench_split_copy_paste.py [--data-root /work/shared/data/camvid]

Everything is written to a temporary outputs folder (label cache included, so the first pixel
count is cold), removed at the end. Prints a markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def plain_pixel_counts(coco, classes):
    """The plain way: decode every annotation to a full mask with pycocotools, paint largest
    first, count."""
    from pycocotools import mask as mask_utils

    from segkit.coco.files import _compressed_rle

    mapping = classes.category_to_index(coco.categories)
    totals = np.zeros(len(classes), np.int64)
    for image in coco.images:
        h, w = image["height"], image["width"]
        label = np.zeros((h, w), np.uint8)
        anns = coco.annotations_by_image[image["id"]]
        masks = [mask_utils.decode({"size": [h, w],
                                    "counts": _compressed_rle(a["segmentation"], h, w)})
                 for a in anns]
        for k in np.argsort([-int(m.sum()) for m in masks], kind="stable"):
            label[masks[k].astype(bool)] = mapping[anns[k]["category_id"]]
        totals += np.bincount(label.ravel(), minlength=len(classes))[: len(classes)]
    return totals


def reencode_only(coco, data_root, n, folder):
    """The floor of copy-paste: read n target images and write them back as JPEG."""
    from segkit.coco.files import read_image

    folder.mkdir(parents=True, exist_ok=True)
    for j in range(n):
        image = coco.images[j % len(coco.images)]
        rgb = read_image(data_root, image)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 95])
        (folder / f"{j:05d}.jpg").write_bytes(buf.tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="/work/shared/data/camvid")
    parser.add_argument("--annotation-file", default="train_all.json")
    parser.add_argument("--images", type=int, default=150, help="copy-paste images in total")
    parser.add_argument("--classes", nargs="+", default=None,
                        help="classes to paste (default: the two with the fewest pixels)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="segkit-bench-"))
    os.environ["SEGKIT_OUTPUTS"] = str(scratch)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # pycocotools on numpy 2
    from segkit.coco import pixel_counts
    from segkit.coco.files import load_coco
    from segkit.core.classes import ClassTable
    from segkit.data import copy_paste, eda
    from segkit.folds import check_fold_files, split, write_folds

    root = Path(args.data_root)
    rows = []
    try:
        coco, t = timed(load_coco, root / args.annotation_file)
        classes = ClassTable.for_coco(coco.categories)
        n_img, n_ann = len(coco.images), len(coco.annotations)
        rows.append(("load_coco", t, f"{n_img} images, {n_ann} annotations"))

        plain, t = timed(plain_pixel_counts, coco, classes)
        rows.append(("pixel counts, plain (pycocotools decode + paint per image)", t, ""))
        pixels, t = timed(pixel_counts, coco, classes, cache=True)
        rows.append(("pixel counts, label cache cold (rasterise + write PNGs)", t, ""))
        pixels, t = timed(pixel_counts, coco, classes, cache=True)
        rows.append(("pixel counts, label cache warm (read PNGs)", t, ""))
        rle, t = timed(pixel_counts, coco, classes, cache=False)
        rows.append(("pixel counts on RLE, no maps (`cache=False`)", t, ""))
        assert (pixels.sum().to_numpy() == plain).all() and rle.equals(pixels)

        for by in split.STRATIFY_BY:
            folds, t_make = timed(split.make_folds, coco, classes, 5, 42, by, pixels)
            written, t_write = timed(write_folds, coco, folds, scratch / "splits" / by)
            report = split.fold_report(coco, classes, folds, pixels)
            worst = split.worst_deviation(report)
            rows.append((f"split by {by}: 5 folds (StratifiedGroupKFold)", t_make,
                         f"mean worst deviation: annotations "
                         f"{worst['worst_annotation_deviation'].mean():.4f}, pixels "
                         f"{worst['worst_pixel_deviation'].mean():.4f}"))
            rows.append((f"split by {by}: write 10 fold files + folds.csv", t_write, ""))
        _, t = timed(check_fold_files, scratch / "splits" / "annotations", coco)
        rows.append(("check_fold_files (reads the 10 files back)", t, ""))

        train = load_coco(scratch / "splits" / "annotations" / "fold0_train.json")
        names = args.classes or list(
            eda.class_summary(eda.object_sizes(train, classes), pixel_counts(train, classes),
                              classes).drop(index=classes.names[0])
            .sort_values("pixels").index[:2])
        per_class = {name: args.images // len(names) for name in names}
        per_class[names[0]] += args.images - sum(per_class.values())
        result, t = timed(copy_paste.copy_paste, train, root, name="bench", classes=names,
                          images_per_class=per_class, objects_per_image=2, seed=0)
        n_out = len(load_coco(result.coco_file).images)
        rows.append((f"copy-paste {n_out} images ({', '.join(names)}; 2 objects each)", t,
                     f"{1000 * t / n_out:.0f} ms per image"))
        _, t = timed(reencode_only, train, root, n_out, scratch / "reencode")
        rows.append((f"reference: read + JPEG-write {n_out} images only", t,
                     f"{1000 * t / n_out:.0f} ms per image"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"data: {root / args.annotation_file}; machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}\n")
    print("| step | seconds | note |")
    print("|---|---:|---|")
    for step, seconds, note in rows:
        print(f"| {step} | {seconds:.2f} | {note} |")


if __name__ == "__main__":
    main()
