"""Write and read a 624-image submission: segkit against the plain way, in the same run.

The plain way is what the teams wrote, in its quickest form: `" ".join(map(str,
label_map.ravel().tolist()))` per row, and `list(map(int, text.split()))` to read one back.
Label maps are synthetic but shaped like real ones (background plus a few objects; the
two-digit class 10 in some images). A second case puts a 10 in every row, so every row takes
segkit's slower general path.

    .venv/bin/python benchmarks/bench_submission.py [--images 624] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from segkit.submission.files import write_submission
from segkit.submission.reader import read_submission

SIZE = (256, 256)


def synthetic_label_maps(count: int, seed: int = 0, num_classes: int = 11) -> np.ndarray:
    """(count, 256, 256) uint8: background with 2-6 rectangles and ellipses of classes
    1..C-1; the last class (two digits for 11 classes) is rarer, as Clothing is."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    maps = np.zeros((count, *SIZE), np.uint8)
    class_p = np.ones(num_classes - 1)
    class_p[-1] = 0.15
    class_p /= class_p.sum()
    for label in maps:
        for _ in range(rng.integers(2, 7)):
            cls = rng.choice(np.arange(1, num_classes), p=class_p)
            cy, cx = rng.integers(0, SIZE[0]), rng.integers(0, SIZE[1])
            ry, rx = rng.integers(8, 90), rng.integers(8, 90)
            if rng.random() < 0.5:
                label[max(cy - ry, 0): cy + ry, max(cx - rx, 0): cx + rx] = cls
            else:
                label[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = cls
    return maps


def file_names(count: int) -> list[str]:
    return [f"batch_0{1 + i % 3}/{i:04d}.jpg" for i in range(count)]


def plain_write(path: Path, names: list[str], maps: np.ndarray) -> None:
    with open(path, "w") as f:
        f.write("image_id,PredictionString\n")
        for name, label in zip(names, maps, strict=True):
            f.write(name + "," + " ".join(map(str, label.ravel().tolist())) + "\n")


def plain_read(path: Path) -> tuple[list[str], np.ndarray]:
    names, rows = [], []
    with open(path) as f:
        next(f)
        for line in f:
            name, text = line.rstrip("\n").split(",")
            names.append(name)
            rows.append(np.array(list(map(int, text.split())), np.uint8))
    return names, np.stack(rows)


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run_case(maps: np.ndarray, names: list[str], repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ours, plain = Path(tmp) / "segkit.csv", Path(tmp) / "plain.csv"
        result = {"plain write": best_time(lambda: plain_write(plain, names, maps), 1),
                  "write": best_time(lambda: write_submission(ours, names, maps), repeat)}
        assert ours.read_bytes() == plain.read_bytes(), "segkit's file differs from the plain one"
        result["plain read"] = best_time(lambda: plain_read(plain), 1)
        result["read"] = best_time(lambda: read_submission(ours), repeat)
        got_names, got = read_submission(ours)
        assert got_names == names and np.array_equal(got, maps.reshape(len(maps), -1))
        result["MB"] = os.path.getsize(ours) / 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=624)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    maps = synthetic_label_maps(args.images)
    names = file_names(args.images)
    every_row = maps.copy()
    every_row[:, 0, 0] = 10
    cases = [(f"typical ({int((maps == 10).any(axis=(1, 2)).sum())} rows with a 10)", maps),
             ("a 10 in every row", every_row)]
    print(f"{args.images} images of 256x256; segkit's file identical byte for byte to the plain "
          f"one; segkit best of {args.repeat}, plain once")
    print("| case | size | write plain | write segkit | speed-up | read plain | read segkit "
          "| speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, case_maps in cases:
        r = run_case(case_maps, names, args.repeat)
        print(f"| {label} | {r['MB']:.1f} MB | {r['plain write']:.2f} s | {r['write']:.3f} s | "
              f"{r['plain write'] / r['write']:.0f}x | {r['plain read']:.2f} s | "
              f"{r['read']:.3f} s | {r['plain read'] / r['read']:.0f}x |")


if __name__ == "__main__":
    main()
