"""The plan's probes: a few timed training iterations on the real data and model, the peak
memory per image, and the GPU batch that fits (segkit.search.plan)."""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

PROBE_VAL_IMAGES = 24  # a probe's validation pass is timed on this many images


@dataclass
class Probe:
    """One timed probe run: sizes, batch, seconds per training iteration and per validation
    pass, start-up seconds, peak memory per image (bytes) and what the device has."""

    image_size: int
    crop_size: int
    batch_size: int
    seconds_per_iter: float
    val_seconds: float
    startup_seconds: float
    bytes_per_image: float
    memory_available: float
    gpu: bool = False
    load: float = 0.0  # the machine's load average when the probe started


def _proc_bytes(path: str, field: str) -> float | None:
    """A "Field: N kB" line of a /proc file, in bytes; None where it cannot be read (not Linux)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{field}:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _read_peak() -> float:
    """This process's peak resident memory since the last reset (Linux), in bytes."""
    peak = _proc_bytes("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _reset_peak() -> float:
    """Reset the peak memory counter (Linux's clear_refs); returns the resident memory now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return _read_peak()
    now = _proc_bytes("/proc/self/status", "VmRSS")
    return now if now is not None else _read_peak()


def _available_memory(cuda: bool) -> float:
    if cuda:
        import torch

        return float(torch.cuda.get_device_properties(0).total_memory)
    available = _proc_bytes("/proc/meminfo", "MemAvailable")
    return available if available is not None else float("inf")


def probe_run(params: dict, folder: Path, iters: int, log_interval: int,
              n_val: int | None = None) -> Probe:
    """Train `iters` iterations (validating half-way and at the end) in this process and read
    the time per iteration (the logged windows after the first, up to the half-way
    validation), per validation pass (the second, warmed up; scaled to `n_val` images when the
    probe validates on fewer) and the start-up from the run (one-off costs included); peak
    memory per image from the device's counters (on a CPU the process's peak, a rough upper
    bound)."""
    import torch

    from segkit.coco.files import load_coco
    from segkit.recipe.parameters import check_training_parameters
    from segkit.results.runs import read_scalars
    from segkit.train.training import run
    from segkit.train.training_data import training_files

    cuda = torch.cuda.is_available()
    shutil.rmtree(folder, ignore_errors=True)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = float(torch.cuda.memory_allocated())
    else:
        base = _reset_peak()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    start = time.time()
    run(**{**params, "iters": iters, "val_interval": iters // 2, "log_interval": log_interval,
           "warmup_iters": 0, "vis_images": 0, "work_dir": str(folder), "resume": False})
    wall = time.time() - start
    peak = float(torch.cuda.max_memory_allocated()) if cuda else _read_peak()
    scalars = read_scalars(folder)
    train = scalars[(scalars["kind"] == "train") & scalars["time"].notna()]
    # mmengine averages "time" over the last 10 iterations, so every window logged after the
    # half-way validation carries the training loop's one-off restart after it (CamVid: +0.3 s
    # an iteration at 16 iterations, twice the real time at 224 px): time the windows before
    before = train[train["step"] <= iters // 2]
    train = before if len(before) else train
    windows = train["time"].iloc[1:] if len(train) > 1 else train["time"]
    per_iter = float(windows.mean())
    val = scalars[scalars["kind"] == "val"]
    probed = len(load_coco(training_files(check_training_parameters(params))[2]).images)
    val_probe = float(val["time"].iloc[-1]) * probed if len(val) else 0.0
    val_seconds = val_probe * (n_val or probed) / max(probed, 1)
    startup = max(0.0, wall - per_iter * iters - len(val) * val_probe)
    for checkpoint in folder.glob("*.pth"):
        checkpoint.unlink()
    return Probe(params["image_size"], params["crop_size"], params["batch_size"], per_iter,
                 val_seconds, startup, max(peak - base, 1.0) / params["batch_size"],
                 _available_memory(cuda), cuda, load)


def _gpu_batch(params: dict, folder: Path, cap: int) -> tuple[int, str]:
    """The batch size from a short memory probe at batch 2 on the GPU."""
    probe = probe_run({**params, "batch_size": 2}, folder, 4, 1, 1)
    fit = int(0.85 * probe.memory_available // probe.bytes_per_image)
    batch = 2 ** int(math.log2(max(2, min(fit, cap))))
    return batch, (f"memory probe: {probe.bytes_per_image / 2**20:.0f} MiB per image at batch "
                   f"2 of {probe.memory_available / 2**30:.0f} GiB, so about {fit} fit; the "
                   f"largest power of two up to {cap}")


def _probe_files(splits: Path, fold: int, folder: Path, n: int = PROBE_VAL_IMAGES) -> dict:
    """The probes' training files: the fold's training file, and its first `n` validation
    images (a validation pass is timed on them and scaled to the whole fold)."""
    from segkit.coco.files import load_coco, subset, write_coco
    from segkit.folds.files import fold_files

    train, val = fold_files(splits, fold)
    coco = load_coco(val)
    few = write_coco(subset(coco, [img["id"] for img in coco.images[:n]]),
                     folder / "probe_val.json")
    return {"fold": None, "train_file": str(train.resolve()), "val_file": str(few.resolve())}
