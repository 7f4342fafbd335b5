"""Rasterising COCO annotations to label maps: segkit.coco.files against pycocotools' annToMask loop.

Run from the repository root:

    .venv/bin/python benchmarks/bench_rasterize.py [--data-root /work/shared/data/camvid]
                                                    [--ann-file train_all.json]

The plain way is what most notebooks do: `COCO(file)`, then for each image `annToMask` every
annotation and paint them largest area first. segkit: `load_coco` + `cached_label_maps` into a
fresh temporary cache (first pass: rasterise and write PNGs), then the same again with the
cache in place plus reading every PNG (cached pass: what every later epoch, fold or notebook
costs). Every label map is checked to be identical to the plain one. Prints a markdown table
for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def plain_label_maps(ann_file: Path, mapping: dict[int, int]) -> dict[int, np.ndarray]:
    """pycocotools' annToMask per annotation, painted largest (decoded) area first."""
    from pycocotools.coco import COCO

    coco = COCO(str(ann_file))
    out = {}
    for image_id in coco.getImgIds():
        info = coco.imgs[image_id]
        label = np.zeros((info["height"], info["width"]), np.uint8)
        anns = coco.imgToAnns[image_id]
        masks = [coco.annToMask(a) for a in anns]
        for k in np.argsort([-int(m.sum()) for m in masks], kind="stable"):
            label[masks[k] == 1] = mapping[anns[k]["category_id"]]
        out[image_id] = label
    return out


def segkit_pass(ann_file: Path, cache_root: Path, read: bool):
    from segkit.coco.files import cached_label_maps, load_coco, read_label
    from segkit.core.classes import ClassTable

    coco = load_coco(ann_file)
    classes = ClassTable.for_coco(coco.categories)
    paths = cached_label_maps(coco, classes, cache_root)
    if read:
        return {i: read_label(p) for i, p in paths.items()}
    return paths


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="/work/shared/data/camvid")
    parser.add_argument("--ann-file", default="train_all.json")
    args = parser.parse_args()
    ann_file = Path(args.data_root) / args.ann_file

    from segkit.coco.files import load_coco, read_label
    from segkit.core.classes import ClassTable

    coco = load_coco(ann_file)
    classes = ClassTable.for_coco(coco.categories)
    mapping = classes.category_to_index(coco.categories)
    n_images, n_anns = len(coco.images), len(coco.annotations)

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "labels"
        plain, t_plain = timed(plain_label_maps, ann_file, mapping)
        paths, t_first = timed(segkit_pass, ann_file, cache, False)
        cached, t_cached = timed(segkit_pass, ann_file, cache, True)
        first = {i: read_label(p) for i, p in paths.items()}
        cache_mb = sum(p.stat().st_size for p in paths.values()) / 1e6

    assert set(plain) == set(first) == set(cached)
    differ = [i for i in plain
              if not (np.array_equal(plain[i], first[i]) and np.array_equal(plain[i], cached[i]))]
    if differ:
        raise SystemExit(f"label maps differ from the plain loop on {len(differ)} images, "
                         f"e.g. image {differ[0]}")

    print(f"{ann_file}: {n_images} images, {n_anns:,} annotations; all {n_images} label maps "
          f"identical to the plain loop's. {platform.machine()}, load average "
          f"{os.getloadavg()[0]:.1f}; cache {cache_mb:.1f} MB of PNGs\n")
    print("| way | seconds | ms / image | speed-up |")
    print("|---|---:|---:|---:|")
    for name, t in (("plain: `COCO()` + `annToMask` per annotation, largest first", t_plain),
                    ("segkit first pass: `load_coco` + `cached_label_maps` (writes PNGs)",
                     t_first),
                    ("segkit cached pass: `load_coco` + `cached_label_maps` + read every PNG",
                     t_cached)):
        print(f"| {name} | {t:.2f} | {1000 * t / n_images:.1f} | {t_plain / t:.1f}x |")
    print(f"\ngoals: first pass >= 4x ({'met' if t_plain / t_first >= 4 else 'missed'}), "
          f"cached pass >= 10x ({'met' if t_plain / t_cached >= 10 else 'missed'})")


if __name__ == "__main__":
    main()
