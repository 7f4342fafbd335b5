"""Training throughput: segkit's runner against a bare PyTorch loop, and fp32 against bf16.

Run from the repository root:

    .venv/bin/python benchmarks/bench_train.py [--model segformer_b0] [--iters 60] [--repeats 2]

Same model (built with MODELS.build from the config segkit.train.training.build_config makes), same
data (a generated 128x128 sample, the same CocoSegDataset and pipeline), same batch size and
optimizer (AdamW, same lr and weight decay), CPU. segkit's figure is its Runner's own iteration
timer (IterTimerHook: data loading, forward, backward, step and every hook), the median over
the iterations after the first `--warmup` (a median, because on a shared machine other
processes' bursts land on single iterations); the bare loop is timed the same way around a plain
DataLoader. A third line times the bare loop on pre-loaded batches: compute only, no data
loading. Variants run in turns (`--repeats` rounds) so a busy machine slows them alike; the best
round of each is reported. Prints a markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch


def sample_and_params(root: Path, args) -> dict:
    from segkit.data.sample import make_sample

    data = make_sample(root / "sample", n_train=40, n_test=2, size=128, seed=0)
    return dict(data_root=str(data), fold=None, train_file=str(data / "train.json"),
                val_file=str(data / "val.json"), model=args.model, weights="none",
                image_size=128, crop_size=128, batch_size=args.batch_size, iters=args.iters,
                val_interval=args.iters, log_interval=10, num_workers=args.workers,
                warmup_iters=10, augment=("flip", "resize_crop"))


def segkit_run(params: dict, work_dir: Path, amp: bool, warmup: int) -> dict:
    """Seconds per iteration of segkit.train.training.run, from the runner's own per-iteration timer."""
    from mmengine.logging import MessageHub

    from segkit.train.training import run

    start = time.perf_counter()
    run(**params, amp=amp, work_dir=str(work_dir))
    total = time.perf_counter() - start
    # The runner's message hub (the newest one) keeps every iteration's own timings; the
    # logged scalars are window means.
    hub = MessageHub.get_current_instance()
    times = hub.get_scalar("train/time").data[0]
    data_times = hub.get_scalar("train/data_time").data[0]
    if len(times) != params["iters"]:
        raise RuntimeError(f"expected {params['iters']} iteration times, found {len(times)}")
    return dict(s_per_iter=float(np.median(times[warmup:])),
                data_time=float(np.median(data_times[warmup:])), wall=total,
                iters=len(times) - warmup)


def bare_loop(params: dict, amp: bool, warmup: int, preload: bool, fused: bool = False) -> dict:
    """The plain way: the same model, optimizer, dataset and batches, in a loop of our own."""
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS, MODELS

    from segkit.train.training import build_config

    init_default_scope("mmseg")
    cfg = build_config(**params, work_dir=tempfile.mkdtemp())
    torch.manual_seed(params.get("seed", 42))
    model = MODELS.build(cfg["model"])
    model.init_weights()
    model.train()
    opt_cfg = cfg["optim_wrapper"]["optimizer"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt_cfg["lr"],
                                  betas=opt_cfg["betas"], weight_decay=opt_cfg["weight_decay"],
                                  fused=fused)
    dataset = DATASETS.build(cfg["train_dataloader"]["dataset"])
    workers = params["num_workers"]
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=params["batch_size"], shuffle=True, num_workers=workers,
        persistent_workers=workers > 0, collate_fn=pseudo_collate, drop_last=True)

    def batches():
        while True:
            yield from loader

    source = batches()
    if preload:
        fixed = [next(source) for _ in range(4)]
        source = (fixed[i % len(fixed)] for i in range(10**9))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if amp else nullcontext()
    times, data_times = [], []
    end = time.perf_counter()
    for _ in range(params["iters"]):
        batch = next(source)
        loaded = time.perf_counter()
        data = model.data_preprocessor(batch, True)
        with autocast:
            losses = model(**data, mode="loss")
        loss, _ = model.parse_losses(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        now = time.perf_counter()
        times.append(now - end)
        data_times.append(loaded - end)
        end = now
    return dict(s_per_iter=statistics.median(times[warmup:]),
                data_time=statistics.median(data_times[warmup:]), iters=len(times) - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="segformer_b0")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (both sides)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="variants to run (default: all)")
    args = parser.parse_args()

    import warnings

    warnings.filterwarnings("ignore")
    variants = ["segkit fp32", "bare fp32", "bare fp32 pre-loaded", "bare fp32 fused AdamW",
                "segkit bf16", "bare bf16"]
    variants = args.only or variants
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["SEGKIT_OUTPUTS"] = str(tmp / "outputs")  # label cache and runs stay here
        params = sample_and_params(tmp, args)
        for r in range(args.repeats):
            for v in variants:
                amp = "bf16" in v
                if v.startswith("segkit"):
                    out = segkit_run(params, tmp / f"run_{r}_{v.replace(' ', '_')}", amp,
                                     args.warmup)
                else:
                    out = bare_loop(params, amp, args.warmup, preload="pre-loaded" in v,
                                    fused="fused" in v)
                results[v].append(out)
                print(f"round {r + 1}: {v:<22} {out['s_per_iter'] * 1000:7.1f} ms/iter "
                      f"(data wait {out['data_time'] * 1000:5.1f} ms)", flush=True)

    best = {v: min(rs, key=lambda o: o["s_per_iter"]) for v, rs in results.items()}
    print(f"\n{args.model}, 128x128, batch {args.batch_size}, {args.workers} workers, "
          f"{args.iters} iterations ({args.warmup} warm-up), best of {args.repeats}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| variant | ms / iteration | it/s | data wait (ms) | all rounds (ms) |")
    print("|---|---:|---:|---:|---|")
    for v, o in best.items():
        rounds = ", ".join(f"{r['s_per_iter'] * 1000:.0f}" for r in results[v])
        print(f"| {v} | {o['s_per_iter'] * 1000:.0f} | {1 / o['s_per_iter']:.2f} | "
              f"{o['data_time'] * 1000:.1f} | {rounds} |")
    speed = {v: 1 / o["s_per_iter"] for v, o in best.items()}
    print()
    for a, b, goal in (("segkit fp32", "bare fp32", 0.9), ("segkit bf16", "bare bf16", 0.9),
                       ("segkit fp32", "bare fp32 fused AdamW", 0.9),
                       ("segkit bf16", "segkit fp32", 1.2), ("bare bf16", "bare fp32", 1.2)):
        if a in speed and b in speed:
            ratio = speed[a] / speed[b]
            print(f"{a} / {b}: {ratio:.2f}x (goal >= {goal}x: "
                  f"{'met' if ratio >= goal else 'missed'})")
    print(json.dumps({v: [r["s_per_iter"] for r in rs] for v, rs in results.items()}))


if __name__ == "__main__":
    main()
