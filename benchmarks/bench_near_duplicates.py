"""Time near-duplicate detection (segkit.data.near_duplicates) on N synthetic 512x512 JPEGs.

Run from the repository root:

    .venv/bin/python benchmarks/bench_near_duplicates.py [--n 3300] [--size 512] [--processes 2]

Writes N distinct synthetic pictures (smooth colour fields with shapes and noise) plus, for 1 in
20 of them, a near-twin (shifted by a few pixels, rescaled by 0.9-1.1, recompressed at quality
70) into a temporary folder, then times hashing cold (no cache), hashing again (cached), and
pair finding. Prints a markdown table for benchmarks/README.md and how many planted twins were
found (and how many pairs among distinct pictures). Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def picture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A distinct synthetic picture: a smooth random colour field, shapes, a little noise."""
    coarse = rng.integers(0, 256, (rng.integers(3, 8), rng.integers(3, 8), 3)).astype(np.uint8)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(3, 9)):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        center = tuple(int(c) for c in rng.integers(0, size, 2))
        if rng.random() < 0.5:
            cv2.circle(image, center, int(rng.integers(size // 20, size // 4)), color, -1)
        else:
            other = tuple(int(c) for c in rng.integers(0, size, 2))
            cv2.rectangle(image, center, other, color, -1)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def twin(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """The same picture shifted a few pixels and rescaled (recompressed when written)."""
    size = image.shape[0]
    dx, dy = (int(v) for v in rng.integers(-6, 7, 2))
    shifted = np.roll(image, (dy, dx), axis=(0, 1))
    scale = float(rng.uniform(0.9, 1.1))
    resized = cv2.resize(shifted, (round(size * scale), round(size * scale)),
                         interpolation=cv2.INTER_AREA)
    return resized


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> tuple[dict, list]:
    """A COCO dict of n pictures (and 1 in 20 of them again as a twin); the planted pairs."""
    rng = np.random.default_rng(seed)
    images, planted = [], []
    for k in range(n):
        image = picture(rng, size)
        name = f"img_{k:05d}.jpg"
        cv2.imwrite(str(folder / name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": len(images), "file_name": name, "width": size, "height": size})
        if k % 20 == 0:
            other = twin(rng, image)
            twin_name = f"img_{k:05d}_twin.jpg"
            cv2.imwrite(str(folder / twin_name), other, [cv2.IMWRITE_JPEG_QUALITY, 70])
            planted.append((len(images) - 1, len(images)))
            images.append({"id": len(images), "file_name": twin_name,
                           "width": other.shape[1], "height": other.shape[0]})
    return {"images": images, "annotations": [], "categories": [{"id": 1, "name": "thing"}]}, planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3300, help="distinct pictures")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threshold", type=int, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_near_duplicates_"))
    os.environ["SEGKIT_OUTPUTS"] = str(work / "outputs")  # a cold cache
    from segkit.coco.files import Coco
    from segkit.data.near_duplicates import DEFAULT_THRESHOLD, find_pairs, hash_images

    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    try:
        data = work / "images"
        data.mkdir()
        start = time.perf_counter()
        coco_dict, planted = make_images(data, args.n, args.size)
        generate = time.perf_counter() - start
        coco = Coco(path=work / "synthetic.json", images=coco_dict["images"], annotations=[],
                    categories=coco_dict["categories"], extra={}, digest="", warnings=[])
        rows = []
        start = time.perf_counter()
        hashes = hash_images(coco, data, processes=args.processes)
        rows.append(("hash, cold (decode + pHash + dHash, cache written)",
                     time.perf_counter() - start))
        start = time.perf_counter()
        again = hash_images(coco, data, processes=args.processes)
        rows.append(("hash, cached (stat + cache read)", time.perf_counter() - start))
        assert again.equals(hashes)
        start = time.perf_counter()
        pairs = find_pairs(hashes, threshold)
        rows.append((f"pairs within {threshold} bits (numpy XOR + popcount)",
                     time.perf_counter() - start))
        found = set(zip(pairs["image_a"], pairs["image_b"]))
        hits = sum(p in found for p in planted)
        false = len(found - set(planted))
        n_images = len(coco.images)
        print(f"{n_images} images ({args.n} pictures + {len(planted)} twins) of "
              f"{args.size}x{args.size} JPEG, {args.processes} processes, "
              f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
              f"generating them took {generate:.1f} s")
        print()
        print("| step | seconds | ms / image |")
        print("|---|---:|---:|")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.2f} | {1000 * seconds / n_images:.2f} |")
        print()
        print(f"planted twins found: {hits} of {len(planted)}; pairs among distinct pictures: "
              f"{false}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
