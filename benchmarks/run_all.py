"""Run every benchmark in benchmarks/ one after another and summarise (what `make bench` runs).

    .venv/bin/python benchmarks/run_all.py [--list | --dry-run] [--only NAME ...] [--full]

Each `bench_*.py` runs in its own process with the same Python, one at a time (they time
things, so never in parallel), with its quick arguments (below; the script's defaults where it
has none) unless --full is given. A benchmark that needs CUDA is skipped where there is none,
one that needs the CamVid data is skipped where that folder is absent. Each one's output is
shown as it runs and kept in outputs/bench/<name>.log; the summary lists status and time, and
the exit status is the number of benchmarks that failed. --list / --dry-run print the plan
(the commands and what would be skipped) and run nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CAMVID = "/work/shared/data/camvid"

# Quick arguments of the benchmarks that have a shorter form than their defaults.
QUICK = {
    "bench_data": ["--quick"],
    "bench_gpu": ["--quick"],
    "bench_train": ["--iters", "30", "--warmup", "5", "--repeats", "1"],
}
# What a benchmark needs to be worth starting.
NEEDS_CUDA = {"bench_gpu"}
NEEDS_CAMVID = {"bench_rasterize", "bench_split_copy_paste"}


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def plan(full: bool, only: list[str] | None) -> list[dict]:
    scripts = sorted(HERE.glob("bench_*.py"))
    names = [p.stem for p in scripts]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise SystemExit(f"run_all: no benchmark named {', '.join(unknown)}; there are "
                         f"{', '.join(names)}")
    cuda = None
    steps = []
    for path in scripts:
        name = path.stem
        if only and name not in only:
            continue
        args = [] if full else QUICK.get(name, [])
        skip = None
        if name in NEEDS_CUDA:
            cuda = cuda_available() if cuda is None else cuda
            if not cuda:
                skip = "no CUDA device"
        if name in NEEDS_CAMVID and not Path(CAMVID).is_dir():
            skip = f"{CAMVID} absent"
        steps.append(dict(name=name, cmd=[sys.executable, str(path.relative_to(ROOT)), *args],
                          skip=skip))
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="same as --list")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these benchmarks only")
    parser.add_argument("--full", action="store_true", help="each benchmark's default arguments")
    args = parser.parse_args()

    steps = plan(args.full, args.only)
    if args.list or args.dry_run:
        for s in steps:
            line = " ".join(s["cmd"][1:])
            print(f"{s['name']:<24} {'SKIP (' + s['skip'] + ')' if s['skip'] else 'run'}: "
                  f"{line}")
        return 0

    logs = ROOT / "outputs" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    for s in steps:
        if s["skip"]:
            print(f"\n=== {s['name']}: skipped ({s['skip']})", flush=True)
            results.append((s["name"], f"skipped: {s['skip']}", 0.0))
            continue
        print(f"\n=== {s['name']}: {' '.join(s['cmd'][1:])}", flush=True)
        start = time.perf_counter()
        with open(logs / f"{s['name']}.log", "w") as log:
            proc = subprocess.Popen(s["cmd"], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"))
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            rc = proc.wait()
        seconds = time.perf_counter() - start
        results.append((s["name"], "ok" if rc == 0 else f"FAILED (exit {rc})", seconds))

    print("\n| benchmark | status | seconds |\n|---|---|---:|")
    for name, status, seconds in results:
        print(f"| {name} | {status} | {seconds:.0f} |")
    print(f"\nlogs in {logs}")
    return sum(status.startswith("FAILED") for _, status, _ in results)


if __name__ == "__main__":
    sys.exit(main())
