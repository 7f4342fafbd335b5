"""GPU training and inference throughput: segkit against the model-only limit.

Run from the repository root on a machine with CUDA (elsewhere it prints why it skips and
exits 0):

    python benchmarks/bench_gpu.py [--quick] [--out benchmarks/results_gpu.md]
    python benchmarks/bench_gpu.py --cpu-smoke        # 64 px, 2 iterations, on the CPU: checks the script

For SegFormer-B0 (batch 16) and UperNet-ConvNeXt-T (batch 8) at 512x512, fp16, random init:

- segkit: `segkit.train.training.run` on a synthetic sample of 512x512 JPEGs (segkit.data.sample.make_sample),
  8 DataLoader workers, amp=True; seconds per iteration are the median of the runner's own
  iteration timer (IterTimerHook: data wait, forward, backward, step, hooks) after warm-up, with
  its data-wait share. The last iterations run under torch.profiler: the top operators by GPU
  and by CPU time show where the time beyond the model goes.
- model-only: the same model (MODELS.build of the config segkit.train.training.build_config makes), a
  few real batches preprocessed once and kept on the GPU, fp16 autocast with a GradScaler and
  fused AdamW (the same lr and weight decay), synchronised only at the end; once as segkit's
  config has it and once with cudnn.benchmark and channels_last.
- inference: 05_predict's path (segkit's load_model + predict_dataset on the test images:
  JPEG decode, fp16 forward, probabilities written at 256x256, the submission CSV), without
  and with flip TTA, against the model's own forward (model.inference + softmax) on batches
  already on the GPU.

Peak GPU memory is torch.cuda.max_memory_allocated of each variant. The whole run takes
about 4 minutes on an H200 (sample drawing and CUDA start included); --quick about 2.
Writes the markdown tables to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

MODELS = (("segformer_b0", 16), ("upernet_convnext_t", 8))


# ---------------------------------------------------------------------------------------------
# The few places that touch segkit's API (adapt here after a restructure)
# ---------------------------------------------------------------------------------------------

def segkit_train(params: dict):
    from segkit.train.training import run

    return run(**params)


def segkit_config(params: dict) -> dict:
    from segkit.train.training import build_config

    return build_config(**params)


def segkit_predict_api():
    """(load_model, predict_dataset, load_coco)."""
    from segkit.coco.files import load_coco
    from segkit.predict.inference import load_model
    from segkit.predict.writing import predict_dataset

    return load_model, predict_dataset, load_coco


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------

def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")


@contextlib.contextmanager
def profile_last_iterations(iters: int, active: int, device: str):
    """torch.profiler over the last `active` training iterations of the runner (the loop's
    run_iter is wrapped to step the profiler); yields a dict that gets the profile."""
    from mmengine.runner.loops import IterBasedTrainLoop
    from torch.profiler import ProfilerActivity, profile, schedule

    out: dict = {}
    if active <= 0:
        yield out
        return
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    warm = 1 if iters > active else 0
    sched = schedule(wait=max(iters - active - warm, 0), warmup=warm, active=active, repeat=1)
    prof = profile(activities=activities, schedule=sched,
                   on_trace_ready=lambda p: out.setdefault("profile", p))
    original = IterBasedTrainLoop.run_iter

    def run_iter(self, data_batch):
        original(self, data_batch)
        prof.step()

    IterBasedTrainLoop.run_iter = run_iter
    prof.start()
    try:
        yield out
    finally:
        IterBasedTrainLoop.run_iter = original
        with contextlib.suppress(Exception):
            prof.stop()
        out.setdefault("profile", prof)


def top_ops(prof, active: int, n: int = 8) -> tuple[list[dict], float]:
    """The operators with the most self GPU time and the most self CPU time, per iteration,
    and the GPU's busy milliseconds per iteration (all kernels' self time)."""
    rows = []
    for e in prof.key_averages():
        if e.key.startswith("ProfilerStep"):
            continue
        gpu = getattr(e, "self_device_time_total", None)
        if gpu is None:
            gpu = getattr(e, "self_cuda_time_total", 0.0)
        rows.append(dict(op=e.key, gpu_ms=gpu / 1000 / active,
                         cpu_ms=e.self_cpu_time_total / 1000 / active, calls=e.count / active))
    by_gpu = sorted(rows, key=lambda r: -r["gpu_ms"])[:n]
    by_cpu = [r for r in sorted(rows, key=lambda r: -r["cpu_ms"]) if r not in by_gpu][:n]
    return by_gpu + by_cpu, sum(r["gpu_ms"] for r in rows)


def segkit_training(params: dict, warmup: int, profile_iters: int, device: str) -> dict:
    from mmengine.logging import MessageHub

    reset_memory(device)
    iters = params["iters"]
    start = time.perf_counter()
    with profile_last_iterations(iters, profile_iters, device) as prof:
        segkit_train(params)
    wall = time.perf_counter() - start
    hub = MessageHub.get_current_instance()
    times = list(hub.get_scalar("train/time").data[0])
    data_times = list(hub.get_scalar("train/data_time").data[0])
    end = iters - profile_iters - 1 if profile_iters else iters
    keep = slice(warmup, end) if end - warmup >= 3 else slice(min(warmup, len(times) - 1), None)
    s = statistics.median(times[keep])
    return dict(s_per_iter=s, data_ms=statistics.median(data_times[keep]) * 1000,
                images_s=params["batch_size"] / s, peak_gib=peak_gib(device), wall=wall,
                profile=prof.get("profile"), profile_iters=profile_iters)


def model_only_training(params: dict, warmup: int, device: str, amp: bool,
                        fast: bool = False) -> dict:
    """The same model and optimizer on batches already on the device; no runner, no hooks."""
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    from mmseg.registry import MODELS as MMSEG_MODELS

    init_default_scope("mmseg")
    cfg = segkit_config(dict(params, work_dir=tempfile.mkdtemp()))
    torch.manual_seed(0)
    model = MMSEG_MODELS.build(cfg["model"])
    model.init_weights()
    model.to(device).train()
    torch.backends.cudnn.benchmark = fast
    if fast:
        model = model.to(memory_format=torch.channels_last)
    opt_cfg = cfg["optim_wrapper"]["optimizer"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt_cfg["lr"], betas=opt_cfg["betas"],
                                  weight_decay=opt_cfg["weight_decay"], fused=True)
    scaler = torch.amp.GradScaler(device, enabled=amp)
    dataset = DATASETS.build(cfg["train_dataloader"]["dataset"])
    b = params["batch_size"]
    batches = []
    for k in range(2):
        raw = pseudo_collate([dataset[(k * b + j) % len(dataset)] for j in range(b)])
        data = model.data_preprocessor(raw, True)
        if fast:
            data["inputs"] = data["inputs"].contiguous(memory_format=torch.channels_last)
        batches.append(data)
    reset_memory(device)
    iters = params["iters"]
    for i in range(iters):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        data = batches[i % len(batches)]
        with torch.autocast(device, dtype=torch.float16, enabled=amp):
            losses = model(**data, mode="loss")
        loss = sum(v for k, v in losses.items() if "loss" in k)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    sync(device)
    s = (time.perf_counter() - start) / (iters - warmup)
    torch.backends.cudnn.benchmark = False
    return dict(s_per_iter=s, images_s=b / s, peak_gib=peak_gib(device), data_ms=0.0)


def segkit_inference(run_dir: Path, data: Path, out: Path, batch: int, flips: tuple,
                     device: str, amp: bool) -> dict:
    load_model, predict_dataset, load_coco = segkit_predict_api()
    model = load_model(run_dir, checkpoint="last", device=device)
    coco = load_coco(data / "test.json")
    from segkit.predict import PredictOptions

    kwargs = dict(options=PredictOptions(flips=flips, amp=amp), split="test", batch_size=batch,
                  progress=False)
    predict_dataset(model, coco, data, out / "warmup", **kwargs)
    reset_memory(device)
    sync(device)
    start = time.perf_counter()
    predict_dataset(model, coco, data, out / "timed", **kwargs)
    sync(device)
    seconds = time.perf_counter() - start
    n = len(coco.images)
    return dict(images_s=n / seconds, peak_gib=peak_gib(device), model=model, n=n)


def model_only_inference(model, size: int, batch: int, n: int, device: str, amp: bool) -> dict:
    """model.inference + softmax (what segkit's predict calls per view) on normalised batches
    already on the device."""
    x = torch.randn(batch, 3, size, size, device=device)
    metas = [dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                  padding_size=[0, 0, 0, 0]) for _ in range(batch)]
    steps = max(n // batch, 3)
    with torch.no_grad(), torch.autocast(device, dtype=torch.float16, enabled=amp):
        for _ in range(2):
            torch.softmax(model.inference(x, metas).float(), dim=1)
        reset_memory(device)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            torch.softmax(model.inference(x, metas).float(), dim=1)
        sync(device)
    return dict(images_s=steps * batch / (time.perf_counter() - start),
                peak_gib=peak_gib(device))


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def environment(device: str) -> str:
    import importlib.metadata as md

    versions = []
    for dist in ("onedl-mmengine", "onedl-mmsegmentation", "onedl-mmcv"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions.append(f"{dist.split('-')[1]} {md.version(dist)}")
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.machine()})"
    return (f"{datetime.date.today()}, {gpu}, torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}), {', '.join(versions)}, Python "
            f"{platform.python_version()}, {os.cpu_count()} CPU cores")


def fmt(v: float, spec: str = ".0f") -> str:
    return "n/a" if v != v else format(v, spec)


def report(args, env: str, train: dict, infer: dict, profiles: dict) -> str:
    lines = [f"# bench_gpu: {'CPU smoke run (not figures)' if args.cpu_smoke else 'results'}",
             "", env, "",
             f"Training: {args.size}x{args.size} crops, fp16 amp{' (off on the CPU)' if args.cpu_smoke else ''}, "
             f"random init, {args.iters} iterations ({args.warmup} warm-up), {args.workers} "
             f"DataLoader workers for segkit, synthetic {args.size}x{args.size} JPEGs.", "",
             "| model | batch | variant | ms / iteration | images / s | segkit / variant | "
             "data wait (ms) | peak GPU memory (GiB) |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for (name, batch), variants in train.items():
        base = variants["segkit"]["images_s"]
        for variant, r in variants.items():
            lines.append(f"| {name} | {batch} | {variant} | {r['s_per_iter'] * 1000:.1f} | "
                         f"{r['images_s']:.1f} | {base / r['images_s']:.2f} | "
                         f"{r['data_ms']:.1f} | {fmt(r['peak_gib'], '.2f')} |")
    lines += ["", f"Inference: {args.size}x{args.size}, fp16, batch {args.predict_batch}, "
              f"{args.test_images} test images; 05_predict's path includes JPEG decoding and "
              "writing 256x256 probabilities and the submission.", "",
              "| model | variant | images / s | segkit / model-only | peak GPU memory (GiB) |",
              "|---|---|---:|---:|---:|"]
    for name, variants in infer.items():
        base = variants["model-only forward"]["images_s"]
        for variant, r in variants.items():
            lines.append(f"| {name} | {variant} | {r['images_s']:.1f} | "
                         f"{r['images_s'] / base:.2f} | {fmt(r['peak_gib'], '.2f')} |")
    lines += ["", "Goals (issue 18): segkit training >= 0.85x model-only, inference >= 0.9x.", ""]
    for (name, _), variants in train.items():
        ratio = variants["segkit"]["images_s"] / variants["model-only"]["images_s"]
        lines.append(f"- {name} training: segkit / model-only = {ratio:.2f}x "
                     f"({'met' if ratio >= 0.85 else 'missed'})")
    for name, variants in infer.items():
        ratio = (variants["05_predict (no TTA)"]["images_s"]
                 / variants["model-only forward"]["images_s"])
        lines.append(f"- {name} inference: 05_predict / model-only = {ratio:.2f}x "
                     f"({'met' if ratio >= 0.9 else 'missed'})")
    for name, (rows, active, busy, iter_ms) in profiles.items():
        lines += ["", f"Profile of segkit's last {active} training iterations, {name}: the GPU "
                  f"ran kernels for {busy:.1f} ms per iteration (the timed iterations took "
                  f"{iter_ms:.1f} ms without the profiler); top operators by self GPU time, "
                  "then by self CPU time (per iteration).", "",
                  "| operator | self GPU ms | self CPU ms | calls |", "|---|---:|---:|---:|"]
        for r in rows:
            op = r["op"].replace("|", "/")[:70]
            lines.append(f"| {op} | {r['gpu_ms']:.2f} | {r['cpu_ms']:.2f} | {r['calls']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and iterations")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny run on the CPU (64 px, 2 iterations): checks the script")
    parser.add_argument("--models", nargs="*", help="catalogue names (default: both)")
    parser.add_argument("--iters", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--profile-iters", type=int, default=8)
    parser.add_argument("--images", type=int, default=200, help="synthetic training images")
    parser.add_argument("--test-images", type=int, default=96)
    parser.add_argument("--predict-batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", help="markdown file (default benchmarks/results_gpu.md; "
                                      "outputs/bench_gpu_smoke.md with --cpu-smoke)")
    args = parser.parse_args()

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("bench_gpu: skipped, no CUDA device here (torch "
              f"{torch.__version__}); --cpu-smoke checks the script on the CPU")
        return 0
    device = "cpu" if args.cpu_smoke else "cuda"
    amp = device == "cuda"
    models = [(m, b) for m, b in MODELS if not args.models or m in args.models]
    if args.quick:
        args.iters, args.warmup, args.images, args.test_images = 40, 10, 64, 32
    if args.cpu_smoke:
        args.iters, args.warmup, args.profile_iters = 2, 0, 1
        args.images, args.test_images, args.size, args.workers = 8, 4, 64, 0
        args.predict_batch = 2
        models = [(m, 2) for m, _ in models]
    out = Path(args.out or ("outputs/bench_gpu_smoke.md" if args.cpu_smoke
                            else "benchmarks/results_gpu.md"))

    import warnings

    warnings.filterwarnings("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    os.environ["SEGKIT_OUTPUTS"] = str(tmp / "outputs")  # label caches, runs, predictions
    from segkit.data.sample import make_sample

    start = time.perf_counter()
    data = make_sample(tmp / "sample", n_train=args.images, n_test=args.test_images,
                       size=args.size, seed=0)
    print(f"sample: {args.images} + {args.test_images} images of {args.size}x{args.size} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    env = environment(device)
    print(env, flush=True)

    train: dict = {}
    infer: dict = {}
    profiles: dict = {}
    for name, batch in models:
        params = dict(data_root=str(data), fold=None, train_file=str(data / "train.json"),
                      val_file=str(data / "val.json"), model=name, weights="none",
                      image_size=args.size, crop_size=args.size, batch_size=batch,
                      iters=args.iters, val_interval=args.iters, log_interval=10,
                      warmup_iters=min(10, args.iters), num_workers=args.workers, amp=amp)
        run_dir = tmp / "runs" / name
        t0 = time.perf_counter()
        seg = segkit_training(dict(params, work_dir=str(run_dir)), args.warmup,
                              args.profile_iters, device)
        print(f"{name}: segkit {seg['s_per_iter'] * 1000:.1f} ms/iter, {seg['images_s']:.1f} "
              f"images/s, data wait {seg['data_ms']:.1f} ms ({time.perf_counter() - t0:.0f} s)",
              flush=True)
        variants = {"segkit": seg}
        for label, fast in (("model-only", False),
                            ("model-only + cudnn.benchmark + channels_last", True)):
            if fast and (args.quick or args.cpu_smoke):
                continue
            t0 = time.perf_counter()
            variants[label] = model_only_training(params, args.warmup, device, amp, fast)
            print(f"{name}: {label} {variants[label]['s_per_iter'] * 1000:.1f} ms/iter, "
                  f"{variants[label]['images_s']:.1f} images/s "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        train[(name, batch)] = variants
        if seg["profile"] is not None:
            rows, busy = top_ops(seg["profile"], seg["profile_iters"])
            profiles[name] = (rows, seg["profile_iters"], busy, seg["s_per_iter"] * 1000)

        t0 = time.perf_counter()
        rows = {}
        for label, flips, folder in (("05_predict (no TTA)", (), "plain"),
                                     ("05_predict (flip TTA)", ("h",), "flip")):
            r = segkit_inference(run_dir, data, tmp / "pred" / name / folder,
                                 args.predict_batch, flips, device, amp)
            model = r.pop("model")
            rows[label] = r
        rows["model-only forward"] = model_only_inference(model, args.size, args.predict_batch,
                                                          r["n"], device, amp)
        infer[name] = rows
        del model
        print(f"{name}: inference " + ", ".join(f"{k} {v['images_s']:.0f}/s"
                                                 for k, v in rows.items())
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report(args, env, train, infer, profiles))  # what is done so far

    print("\n" + out.read_text())
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
