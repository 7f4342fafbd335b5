"""Hard vote of 5 submissions of 624 images (parse, vote, write): segkit against the per-pixel
Python loop, and segkit's peak memory at two numbers of images.

The loop is what the teams ran: split each model's row into ints, then for every pixel count
the votes with collections.Counter and keep the most common, then join the row back. It takes
about a tenth of a second per image, so it is timed on `--loop-images` images and
extrapolated to all of them (the report says so). segkit's hard vote runs in a fresh process
per size so its peak RSS (VmHWM) is its own; tracemalloc's peak of the numpy/Python
allocations is reported too.

Synthetic submissions (not committed) are written to a temp folder: a shared "truth" per image;
each model shifts it by a few pixels and adds a few wrong objects. Rows holding a two-digit
value (class 10) take segkit's slower parsing path, so a second, worst case adds 2% scattered
pixels of random classes, which puts a 10 into nearly every row; the loop's time per image does
not depend on that.

    .venv/bin/python benchmarks/bench_ensemble.py [--images 624] [--models 5] [--loop-images 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from segkit.submission.files import write_submission
from segkit.submission.reader import read_submission

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_submission import file_names, synthetic_label_maps  # noqa: E402


def model_predictions(truth: np.ndarray, models: int, seed: int = 1,
                      salt: float = 0.0) -> np.ndarray:
    """(models, N, H, W): each model is the truth shifted by up to 3 pixels (boundaries
    disagree), with up to 3 wrong rectangles, and optionally `salt`: a share of scattered
    pixels of random classes (which puts a two-digit 10 into nearly every row)."""
    rng = np.random.default_rng(seed)
    preds = np.empty((models, *truth.shape), np.uint8)
    for k in range(models):
        for i, label in enumerate(truth):
            pred = np.roll(label, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
            for _ in range(rng.integers(0, 4)):
                y, x = rng.integers(0, 256, 2)
                h, w = rng.integers(10, 60, 2)
                pred[y: y + h, x: x + w] = rng.integers(0, 11)
            if salt:
                noise = rng.random(pred.shape) < salt
                pred[noise] = rng.integers(0, 11, int(noise.sum()))
            preds[k, i] = pred
    return preds


def loop_vote(csv_paths: list[Path], out_path: Path, images: int) -> None:
    """The teams' way, on the first `images` rows."""
    files = [open(p) for p in csv_paths]
    try:
        for f in files:
            next(f)
        with open(out_path, "w") as out:
            out.write("image_id,PredictionString\n")
            for _ in range(images):
                rows = [f.readline().rstrip("\n").split(",") for f in files]
                votes = [[int(v) for v in text.split()] for _, text in rows]
                voted = [Counter(pixel).most_common(1)[0][0] for pixel in zip(*votes)]
                out.write(rows[0][0] + "," + " ".join(str(v) for v in voted) + "\n")
    finally:
        for f in files:
            f.close()


CHILD = """
import json, resource, sys, time, tracemalloc
from segkit.submission.vote import hard_vote
paths, out = sys.argv[1:-1], sys.argv[-1]
tracemalloc.start()
start = time.perf_counter()
hard_vote(paths, out)
seconds = time.perf_counter() - start
traced = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
start = time.perf_counter()
hard_vote(paths, out)  # again without tracemalloc, whose bookkeeping slows numpy calls
seconds = min(seconds, time.perf_counter() - start)
# VmHWM: this program's own peak (ru_maxrss can carry the parent's size over the fork)
try:
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "traced_peak": traced, "rss_peak_kb": hwm}))
"""


def run_hard_vote(csv_paths: list[Path], out_path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, *map(str, csv_paths), str(out_path)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def time_command(csv_paths: list[Path], out_path: Path, repeats: int = 3) -> tuple[float, list]:
    """`segkit ensemble --method hard` as a whole process (interpreter start and imports
    included): the best of `repeats`, and the heavy libraries the command imported."""
    probe = ("import runpy, sys; sys.argv = ['segkit'] + sys.argv[1:]; "
             "code = 0\ntry: runpy.run_module('segkit', run_name='__main__')\n"
             "except SystemExit as e: code = e.code\n"
             "print(sorted(m for m in ('pandas', 'torch', 'mmseg', 'sklearn', 'matplotlib') "
             "if m in sys.modules), file=sys.stderr); sys.exit(code)")
    args = ["ensemble", "--method", "hard", "--out", str(out_path), *map(str, csv_paths)]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", probe, *args], check=True,
                              capture_output=True, text=True)
        best = min(best, time.perf_counter() - start)
    return best, json.loads(done.stderr.strip().splitlines()[-1].replace("'", '"'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=624)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--loop-images", type=int, default=10)
    args = parser.parse_args()

    truth = synthetic_label_maps(args.images)
    names = file_names(args.images)
    cases = {"typical": model_predictions(truth, args.models),
             "worst case (2% salt)": model_predictions(truth, args.models, salt=0.02)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for case, preds in cases.items():
            paths = [write_submission(tmp / f"model{k}.csv", names, preds[k])
                     for k in range(args.models)]
            r = results[case] = run_hard_vote(paths, tmp / "vote.csv")
            r["command"], r["imported"] = time_command(paths, tmp / "cli_vote.csv")
            r["rows with a 10"] = float((preds == 10).any(axis=(2, 3)).mean())
            _, voted = read_submission(tmp / "vote.csv")
            r["accuracy"] = float((voted.reshape(truth.shape) == truth).mean())
            r["single"] = (preds == truth).mean(axis=(1, 2, 3))
            if case == "typical":
                start = time.perf_counter()
                loop_vote(paths, tmp / "loop.csv", args.loop_images)
                loop_per_image = (time.perf_counter() - start) / args.loop_images
                # Counter keeps the first-seen class on ties, as segkit's rule does with
                # equal weights: the outputs must agree exactly.
                for k, line in enumerate((tmp / "loop.csv").read_text().splitlines()[1:]):
                    assert np.array_equal(np.array(line.split(",")[1].split(), np.uint8),
                                          voted[k])
                small = max(args.images // 4, 1)
                small_paths = [write_submission(tmp / f"small{k}.csv", names[:small],
                                                preds[k, :small]) for k in range(args.models)]
                results["memory, fewer images"] = run_hard_vote(small_paths, tmp / "small.csv")
        self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    loop_total = loop_per_image * args.images
    print(f"{args.models} submissions x {args.images} images (256x256); segkit's output equals "
          f"the loop's on the {args.loop_images} rows the loop did")
    print("| what | input rows with a 10 | time | speed-up | vote pixel accuracy (single models) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| per-pixel Python loop: {args.loop_images} images timed, x{args.images / args.loop_images:.1f} "
          f"| | {loop_total:.1f} s ({loop_per_image:.3f} s/image) | 1x | |")
    for case in cases:
        r = results[case]
        print(f"| segkit hard_vote, {case}: parse, vote, write all {args.images} "
              f"| {r['rows with a 10']:.0%} | {r['seconds']:.2f} s "
              f"| {loop_total / r['seconds']:.0f}x | {r['accuracy']:.4f} "
              f"({r['single'].min():.4f}-{r['single'].max():.4f}) |")
        print(f"| `segkit ensemble --method hard`, {case}: the whole command, process start "
              f"included (heavy imports: {', '.join(r['imported']) or 'none'}) "
              f"| {r['rows with a 10']:.0%} | {r['command']:.2f} s "
              f"| {loop_total / r['command']:.0f}x | |")
    print()
    print("| images | peak RSS of the hard-vote process | tracemalloc peak |")
    print("|---:|---:|---:|")
    small, full = results["memory, fewer images"], results["typical"]
    for n, r in ((max(args.images // 4, 1), small), (args.images, full)):
        print(f"| {n} | {r['rss_peak_kb'] / 1024:.0f} MB | {r['traced_peak'] / 2**20:.1f} MB |")
    print(f"(this benchmark process, holding the synthetic data: {self_rss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
