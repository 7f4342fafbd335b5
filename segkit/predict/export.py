"""A trained run's model as one file for serving without mmseg: TorchScript (always) or ONNX
(`pip install 'segkit[export]'`: onnx, onnxruntime, onnxscript), checked against the run.

The exported model takes one normalised RGB image, float32 (1, 3, H, W) at the fixed size it
was exported at, and returns class scores (1, C, H, W) at that size: mmseg's `mode="tensor"`
forward followed by its resize to the input size (EncoderDecoder.encode_decode), i.e. logits
for the usual heads and Mask2Former's non-negative class scores for mask-classification heads.
Beside the file, `<file>.json` (e.g. best_mIoU_iter_300.onnx.json) holds what a caller needs:
input size, channel order, mean and std (x = (rgb - mean) / std), the classes in output order,
the run and checkpoint, and the check.

The check: the exported file is run (TorchScript by torch, ONNX by onnxruntime) on up to four
images of the run's validation file (seeded noise where they cannot be read) beside the run's
PyTorch model; the largest absolute difference of the class probabilities (softmax of the
logits; scores normalised to sum 1 for mask heads) must be at most `PROB_TOLERANCE` (1e-5),
and that of the raw outputs is recorded too (measured: 0 for TorchScript, about 1e-6 for ONNX on
efficientnet_lite0). Mask heads' scores (0 to about 1) are normalised to probabilities only
where they sum to at least 1e-3 (below, a barely trained model's, they decide nothing and
normalising magnifies float noise: 1e-8 score differences became 0.13 in probability), and the
scores themselves must agree within 1e-5. A failing file is removed and the error gives both differences. ONNX is
written by torch.export (dynamo) where it can take the model, else by the TorchScript-based
exporter (opset 17: Mask2Former); the JSON names which.

Example:
    exported = export_run("efficientnet_lite0_fold0", "onnx")
    exported.path, exported.check["max_abs_prob_diff"]
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segkit.core.checks import check_choice
from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import outputs_dir, write_text_atomic
from segkit.results.runs import Run

EXPORT_FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
PROB_TOLERANCE = 1e-5  # max |probability difference| between the exported model and the run's
# mask-classification heads (Mask2Former): probabilities compared where the class scores sum to
# at least this, and the scores themselves (0 to about 1) within MASK_OUTPUT_TOLERANCE
MASK_SCORE_FLOOR = 1e-3
MASK_OUTPUT_TOLERANCE = 1e-5
CHECK_IMAGES = 4


@dataclass
class Exported:
    """What `export_run` wrote: the model file, its JSON description, and the check's
    numbers (images, max_abs_prob_diff, max_abs_output_diff, tolerance)."""

    path: Path
    info_path: Path
    check: dict = field(default_factory=dict)


def onnx_available() -> bool:
    """Whether the `export` extra (onnx, onnxruntime, onnxscript) is installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None
               for m in ("onnx", "onnxruntime", "onnxscript"))


def _wrapper(model, size: tuple[int, int]):
    import torch

    class ScoresAtInputSize(torch.nn.Module):
        """mode="tensor" forward and mmseg's resize to the input size (encode_decode)."""

        def __init__(self):
            super().__init__()
            self.model = model
            self.metas = [dict(img_shape=size, ori_shape=size, pad_shape=size,
                               padding_size=[0, 0, 0, 0])]

        def forward(self, x):
            return self.model.encode_decode(x, self.metas)

    return ScoresAtInputSize().eval()


def _probs(model, scores: np.ndarray) -> np.ndarray:
    """Class probabilities of raw outputs, as segkit's prediction makes them."""
    import torch

    from segkit.predict.inference import _to_probs

    return _to_probs(model, torch.from_numpy(scores)).numpy()


def _check_inputs(run: Run, model, size: tuple[int, int], count: int) -> tuple[list, str]:
    """Normalised (1, 3, H, W) float32 inputs: the run's first validation images resized to
    `size`, else seeded noise; and where they came from."""
    import cv2

    from segkit.coco.files import load_coco, read_image

    pre = model.data_preprocessor
    mean = pre.mean.reshape(1, 3, 1, 1).cpu().numpy()
    std = pre.std.reshape(1, 3, 1, 1).cpu().numpy()
    images, source = [], "seeded noise (the validation images could not be read)"
    try:
        root, val_file = run.data()
        coco = load_coco(val_file)
        for entry in coco.images[:count]:
            images.append(read_image(root, entry))
        source = f"the first {len(images)} images of {val_file}"
    except (SegkitError, OSError, TypeError):
        images = []
    if not images:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
                  for _ in range(count)]
    inputs = []
    for image in images:
        resized = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        x = resized.astype(np.float32).transpose(2, 0, 1)[None]
        inputs.append(((x - mean) / std).astype(np.float32))
    return inputs, source


def _runner(fmt: str, path: Path):
    """A function running the exported file on one input (numpy in, numpy out)."""
    if fmt == "torchscript":
        import torch

        loaded = torch.jit.load(str(path), map_location="cpu").eval()

        def run_torchscript(x):
            with torch.no_grad():
                return loaded(torch.from_numpy(x)).numpy()

        return run_torchscript
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _write_model(fmt: str, wrapper, example, path: Path) -> str:
    """Write the exported file; returns the exporter that wrote it."""
    import logging
    import warnings

    import torch

    # the tracer's and exporter's notes (python values traced as constants, torchvision's
    # detection ops skipped) say nothing about a segmentation model: the check below does
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "torchscript":
                torch.jit.trace(wrapper, example, check_trace=False).save(str(path))
                return "torch.jit.trace"
            common = dict(input_names=["image"], output_names=["scores"], verbose=False)
            try:
                torch.onnx.export(wrapper, (example,), str(path), dynamo=True,
                                  external_data=False, **common)
                return "torch.onnx (dynamo)"
            except Exception:  # noqa: BLE001 - torch.export cannot take every model
                # (Mask2Former fails in torch.export): the TorchScript-based exporter can
                path.unlink(missing_ok=True)
                torch.onnx.export(wrapper, (example,), str(path), dynamo=False,
                                  opset_version=17, **common)
                return "torch.onnx (TorchScript-based, opset 17)"
    finally:
        quiet.setLevel(level)


def _compare(model, wrapper, exported, inputs, mask_head: bool) -> dict:
    """The exported model's outputs against the run's on `inputs`: the largest probability
    and raw-output differences, and how many pixels were compared."""
    import torch

    prob_diff = output_diff = 0.0
    scored = 0  # pixels whose probabilities were compared
    for x in inputs:
        with torch.no_grad():
            reference = wrapper(torch.from_numpy(x)).numpy()
        got = np.asarray(exported(x))
        if got.shape != reference.shape:
            raise SegkitError(f"export: output shape {got.shape}, the run's model gives "
                              f"{reference.shape}")
        output_diff = max(output_diff, float(np.abs(got - reference).max()))
        diff = np.abs(_probs(model, got) - _probs(model, reference)).max(1)
        # mask heads: scores summing to almost nothing (a barely trained model) decide
        # nothing, and normalising them magnifies float noise; compared where they count
        where = reference.sum(1) >= MASK_SCORE_FLOOR if mask_head else np.ones_like(diff, bool)
        scored += int(where.sum())
        prob_diff = max(prob_diff, float(diff[where].max()) if where.any() else 0.0)
    return dict(images=len(inputs), max_abs_prob_diff=prob_diff,
                max_abs_output_diff=output_diff, tolerance=PROB_TOLERANCE,
                pixels_compared=scored,
                compared="class probabilities (softmax of logits; mask heads: scores "
                         f"normalised to sum 1, where they sum to >= {MASK_SCORE_FLOOR:g})")


def _refuse_differences(fmt: str, name: str, check: dict, mask_head: bool, source) -> None:
    """A SegkitError when the export is off by more than the stated tolerances."""
    prob_diff, output_diff = check["max_abs_prob_diff"], check["max_abs_output_diff"]
    problems = []
    if not prob_diff <= PROB_TOLERANCE:
        problems.append(f"max |probability difference| {prob_diff:.3g} > {PROB_TOLERANCE:g}")
    if mask_head and not output_diff <= MASK_OUTPUT_TOLERANCE:
        problems.append(f"max |score difference| {output_diff:.3g} > "
                        f"{MASK_OUTPUT_TOLERANCE:g}")
    if problems:
        raise SegkitError(f"{fmt} export of {name} differs from the run's model: "
                          f"{'; '.join(problems)} (raw outputs: {output_diff:.3g}) on "
                          f"{source}; nothing written")


def export_run(run: str | os.PathLike | Run, fmt: str = "torchscript",
               checkpoint: str = "best", out: str | os.PathLike | None = None,
               size: tuple[int, int] | None = None, check_images: int = CHECK_IMAGES
               ) -> Exported:
    """Export a run's model (see the module docstring) and check it against the run.

    fmt: "torchscript" (.pt, torch.jit) or "onnx" (.onnx; needs the `export` extra).
    size: (H, W) of the input; default the run's validation scale (the box its validation
    resized into), else 512x512. out: the file; default outputs/exports/<run>/<checkpoint
    file stem>.<pt|onnx>. The file and its JSON are written only when the check passes.
    """
    import torch

    from segkit.predict.inference import load_model, model_classes

    check_choice("format", fmt, EXPORT_FORMATS)
    if fmt == "onnx" and not onnx_available():
        raise ParameterError("ONNX export needs onnx, onnxruntime and onnxscript: "
                             "pip install 'segkit[export]' (TorchScript needs nothing more)")
    run = Run.open(run)
    model = load_model(run, checkpoint, device="cpu")
    if size is None:
        box = getattr(model, "segkit_input_scale", None)
        size = (int(box[1]), int(box[0])) if box else (512, 512)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ParameterError(f"size={size}: expected (H, W), two positive numbers")
    ckpt = Path(model.segkit_checkpoint)
    path = Path(out) if out else outputs_dir() / "exports" / run.name / \
        f"{ckpt.stem}{SUFFIXES[fmt]}"
    if path.suffix != SUFFIXES[fmt]:
        raise ParameterError(f"{path}: a {fmt} file ends in {SUFFIXES[fmt]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _wrapper(model, size)
    inputs, source = _check_inputs(run, model, size, max(1, check_images))
    building = path.with_name(f".{path.name}.building{SUFFIXES[fmt]}")
    try:
        exporter = _write_model(fmt, wrapper, torch.from_numpy(inputs[0]), building)
        exported = _runner(fmt, building)
        mask_head = type(model.decode_head).__name__ in ("Mask2FormerHead", "MaskFormerHead")
        check = _compare(model, wrapper, exported, inputs, mask_head)
        check = dict(exporter=exporter, source=source, **check)
        _refuse_differences(fmt, run.name, check, mask_head, source)
        os.replace(building, path)
    finally:
        building.unlink(missing_ok=True)
    pre = model.data_preprocessor
    info = dict(
        format=fmt, file=path.name, run=str(run.path), checkpoint=str(ckpt),
        input=dict(name="image", shape=[1, 3, size[0], size[1]], size=list(size),
                   dtype="float32", channel_order="RGB",
                   mean=[round(float(v), 6) for v in pre.mean.flatten()],
                   std=[round(float(v), 6) for v in pre.std.flatten()],
                   normalise="x = (rgb - mean) / std, an image resized to the shape's H x W"),
        output=dict(name="scores", shape=[1, len(model_classes(model)), size[0], size[1]],
                    kind="class scores (non-negative; normalise to sum 1)" if mask_head
                    else "logits (softmax over dim 1 for probabilities)"),
        classes=model_classes(model), check=check)
    info_path = path.with_name(f"{path.name}.json")
    write_text_atomic(info_path, json.dumps(info, indent=1))
    return Exported(path, info_path, check)
