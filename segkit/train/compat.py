"""Every workaround the pinned OpenMMLab stack needs, applied once, each saying why.

The stack is the maintained community fork (onedl-mmengine 0.10.12, onedl-mmsegmentation 1.4.2,
onedl-mmcv 2.3.6 without compiled ops, onedl-mmdetection 3.5.1) on current torch. `apply()`
runs on import of segkit's training and prediction code; it is idempotent, and nothing here
changes behaviour where it is not needed (compiled mmcv ops installed, several GPUs, ...).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.machinery
import importlib.util
import io
import logging
import sys
import types
from contextlib import contextmanager

import torch

_applied = False


# 1. mmcv without compiled ops ------------------------------------------------------------------
# A plain `pip install onedl-mmcv` builds without `mmcv._ext`. SegFormer / FCN / UperNet never
# touch it, but onedl-mmdetection imports `mmcv.ops` at top level, so Mask2Former fails to import
# (with a misleading "please install mmdet" message). A stand-in module lets the import succeed;
# any compiled function that is really *called* raises at once. Mask2Former's deformable
# attention uses mmcv's pure-PyTorch path on CPU, so it trains and predicts on CPU.

class MissingCompiledOp(RuntimeError):
    pass


def _missing_op(name: str):
    def fail(*args, **kwargs):
        raise MissingCompiledOp(
            f"mmcv op {name!r} needs mmcv's compiled extension, which this install lacks. "
            "Build it: pip install ninja 'setuptools>=80' wheel && MAX_JOBS=4 pip install "
            "--no-build-isolation --no-cache-dir --force-reinstall --no-deps onedl-mmcv==2.3.6")
    fail.__name__ = name
    return fail


def _repair_mask_heads() -> list[str]:
    """mmseg's Mask2Former and MaskFormer heads, rebound to mmdet's when mmseg was imported
    before the stand-in (a notebook or script that imports mmseg first): their modules then
    caught the failed mmdet import and keep a placeholder base class that raises "Please
    install onedl-mmdetection" although it is installed. Each such module is imported again
    (its registry entry replaced). Returns the heads repaired."""
    import importlib

    from mmengine.model import BaseModule

    repaired = []
    for module_name, base, head in (("mask2former_head", "MMDET_Mask2FormerHead",
                                     "Mask2FormerHead"),
                                    ("maskformer_head", "MMDET_MaskFormerHead", "MaskFormerHead")):
        module = sys.modules.get(f"mmseg.models.decode_heads.{module_name}")
        if module is None or getattr(module, base, None) is not BaseModule:
            continue
        from mmseg.registry import MODELS

        MODELS.module_dict.pop(head, None)
        try:
            importlib.reload(module)
        except ImportError:  # mmdet really is unusable: leave mmseg's own message
            continue
        for package in ("mmseg.models.decode_heads", "mmseg.models"):
            if hasattr(sys.modules.get(package), head):
                setattr(sys.modules[package], head, getattr(module, head))
        repaired.append(head)
    if repaired:
        _rebind_mmcv_op_placeholders()
    return repaired


def _rebind_mmcv_op_placeholders() -> int:
    """The other half of that repair: mmdet's and mmseg's modules imported before the
    stand-in defined placeholders for the mmcv ops they could not import (a
    MultiScaleDeformableAttention that raises in __init__, a point_sample, ...); each is
    rebound to mmcv.ops' own (pure PyTorch where the op has a CPU path). Returns how many."""
    import mmcv.ops

    real = {name: getattr(mmcv.ops, name) for name in getattr(mmcv.ops, "__all__", ())
            if hasattr(mmcv.ops, name)}
    count = 0
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("mmdet.", "mmseg.")):
            continue
        for attr, value in list(vars(module).items()):
            if attr in real and value is not real[attr] and \
                    getattr(value, "__module__", None) == name:
                setattr(module, attr, real[attr])
                count += 1
    return count


class _DropLineNMSNote(logging.Filter):
    """mmdet's CLRNet lane head logs "Line NMS is not compiled ... This model cannot work
    without CUDA" on import whenever mmcv lacks that CUDA op: a lane-detection head that no
    segmentation model uses, so the warning is noise in every notebook that loads a model."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Line NMS is not compiled" not in record.getMessage()


@contextmanager
def _without_line_nms_note():
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    note = _DropLineNMSNote()
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


def mmcv_has_compiled_ops() -> bool:
    stand_in = sys.modules.get("mmcv._ext")
    if stand_in is not None:
        return not getattr(stand_in, "__segkit_stand_in__", False)
    return importlib.util.find_spec("mmcv._ext") is not None


def install_mmcv_ext_stand_in() -> bool:
    """Register a stand-in `mmcv._ext` if (and only if) the compiled one is absent."""
    if mmcv_has_compiled_ops() or "mmcv._ext" in sys.modules:
        return False
    module = types.ModuleType("mmcv._ext")
    # importlib.util.find_spec raises on a module without a spec (mmengine calls it).
    module.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", loader=None)
    module.__segkit_stand_in__ = True
    module.__getattr__ = lambda name: (_missing_op(name) if not name.startswith("__")
                                       else (_ for _ in ()).throw(AttributeError(name)))
    sys.modules["mmcv._ext"] = module
    return True


# 2. bf16 autocast on CPU --------------------------------------------------------------------
# mmengine's AmpOptimWrapper refuses CPU, and fp16 autocast on CPU does not work; bf16 autocast
# on CPU does (about 25% faster on a CPU with native bf16; see `cpu_has_fast_bf16` for the
# others). This wrapper is the CPU counterpart of AmpOptimWrapper.

def _register_bf16_wrapper():
    from mmengine.optim import OptimWrapper
    from mmengine.registry import OPTIM_WRAPPERS

    if "CPUBF16OptimWrapper" in OPTIM_WRAPPERS.module_dict:
        return

    @OPTIM_WRAPPERS.register_module()
    class CPUBF16OptimWrapper(OptimWrapper):
        """OptimWrapper whose forward pass runs under bf16 autocast on the CPU."""

        @contextmanager
        def optim_context(self, model):
            with super().optim_context(model), torch.autocast("cpu", dtype=torch.bfloat16):
                yield


@functools.lru_cache(maxsize=1)  # the CPU does not change; autocast asks once per batch
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN reports it.

    Without it, bf16 autocast is emulated and slower than fp32, not faster: on an AVX2-only
    AMD EPYC, SegFormer-B0 trained at 2.8 s per iteration in bf16 against 0.3 s in fp32.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: str, enabled: bool = True):
    """Mixed precision for inference: fp16 on CUDA, bf16 on a CPU with native bf16, else off."""
    if enabled and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    if enabled and cpu_has_fast_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


# 3. Mask2Former slide inference -------------------------------------------------------------
# EncoderDecoder.slide_inference sets each crop's `img_shape`, but Mask2FormerHead.predict
# upsamples its masks to `pad_shape` (the whole padded image) when present, so adding the crop
# back fails on a size mismatch (described in open-mmlab/mmsegmentation PR #3752). In slide
# mode the crop's own shape is the right size.

def _patch_mask2former_slide():
    from mmseg.models.decode_heads import mask2former_head

    head = getattr(mask2former_head, "Mask2FormerHead", None)
    if head is None or getattr(head.predict, "__segkit_patched__", False):
        return
    original = head.predict

    @functools.wraps(original)  # keeps the original as predict.__wrapped__
    def predict(self, x, batch_img_metas, test_cfg):
        if test_cfg and test_cfg.get("mode") == "slide":
            batch_img_metas = [{k: v for k, v in m.items() if k != "pad_shape"}
                               for m in batch_img_metas]
        return original(self, x, batch_img_metas, test_cfg)

    predict.__segkit_patched__ = True
    head.predict = predict


# 4. SyncBN without GPUs -----------------------------------------------------------------------
# Model-zoo configs use SyncBN. On one process it is harmless (torch falls back to plain batch
# norm when no process group is initialised, and mmengine's Runner reverts it), but a
# multi-process run on CPUs (torchrun with gloo) fails in the first forward: SyncBatchNorm
# only synchronises GPU tensors. segkit writes BN into the config unless the run is
# distributed on GPUs; on one device BN also keeps built models plain for inference code.

def keep_sync_bn(distributed: bool) -> bool:
    """Whether a run may keep SyncBN: only when distributed over CUDA devices."""
    return distributed and torch.cuda.is_available()


def sync_bn_to_bn(cfg):
    """A copy of a config (dict / list / mmengine ConfigDict) with SyncBN replaced by BN."""
    if isinstance(cfg, dict):
        out = {k: sync_bn_to_bn(v) for k, v in cfg.items()}
        if out.get("type") == "SyncBN":
            out["type"] = "BN"
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(sync_bn_to_bn(v) for v in cfg)
    return copy.copy(cfg)


@contextmanager
def _without_import_notes():
    """The fork print()s "Could not import OneDL" (meant as a DEBUG log line) when its optional
    OneDL datasets are absent, into every notebook that imports mmseg: drop that line only."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        kept = [line for line in buffer.getvalue().splitlines(keepends=True)
                if "Could not import OneDL" not in line]
        sys.stdout.write("".join(kept))


@contextmanager
def quiet_model_loading():
    """Loading a model in a notebook (05-07): mmengine prints "Loads checkpoint by local backend"
    for every checkpoint, and the first load warns that mmcv's compiled deformable attention is
    absent (Mask2Former's real need is reported by segkit's stand-in)."""
    import warnings

    buffer = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
            warnings.filterwarnings("ignore", message="Fail to import ``MultiScaleDeformable")
            yield
    finally:
        sys.stdout.write("".join(line for line in buffer.getvalue().splitlines(keepends=True)
                                 if not line.startswith("Loads checkpoint by")))


# 5. `_base_ = ['mmseg::...']` with the fork installed ------------------------------------------
# mmengine finds a scope's configs through the pip distribution it expects (`mmseg` ->
# "mmsegmentation", `mmdet` -> "mmdetection"); the fork's distributions are named
# onedl-mmsegmentation and onedl-mmdetection, so a user's config inheriting `mmseg::...` failed
# with "mmsegmentation is not installed". A scope whose expected distribution is absent but
# whose module imports is resolved through the module itself (its folder holds the same
# `.mim/configs`), as mmengine does for packages without distribution metadata.

def resolve_config_scopes() -> dict[str, str]:
    """Point mmengine's scope table at importable modules where the distribution it names is
    not installed; returns {scope: what it was changed to}. Idempotent."""
    import importlib.metadata as md

    from mmengine.config import utils as config_utils

    changed = {}
    for scope, dist in list(config_utils.MODULE2PACKAGE.items()):
        if dist == scope:
            continue
        try:
            md.version(dist)
            continue
        except md.PackageNotFoundError:
            pass
        try:
            spec = importlib.util.find_spec(scope)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin is not None:
            config_utils.MODULE2PACKAGE[scope] = scope
            changed[scope] = scope
    return changed


def _allow_cpu_torchrun() -> None:
    """mmengine's `pytorch` launcher calls torch.cuda.set_device unconditionally, which fails
    on a machine without CUDA; there the processes train on the CPU over gloo and need no
    device, so the call is skipped (GPU machines take mmengine's own path)."""
    import mmengine.dist.utils as dist_utils
    import torch.distributed as torch_dist

    original = dist_utils._init_dist_pytorch
    if getattr(original, "segkit_patched", False):
        return

    def init(backend="nccl", init_backend="torch", **kwargs):
        if torch.cuda.is_available():
            return original(backend, init_backend=init_backend, **kwargs)
        torch_dist.init_process_group(backend="gloo", **kwargs)

    init.segkit_patched = True
    dist_utils._init_dist_pytorch = init


def _explain_failed_downloads() -> None:
    """Weights by URL (weights=zoo, a config's backbone checkpoint) are downloaded by mmengine
    when the model is built; without network access that is a URLError traceback from deep in
    the runner. Its http(s) loader is wrapped: a failed download is one SegkitError naming the
    URL and how to train without the network (the file, downloaded elsewhere, as load_from)."""
    from mmengine.runner import checkpoint as ckpt_module

    loaders = ckpt_module.CheckpointLoader._schemes
    original = loaders.get("https://")
    if original is None or getattr(original, "segkit_wrapped", False):
        return

    def load_from_http(filename, *args, **kwargs):
        try:
            return original(filename, *args, **kwargs)
        except OSError as exc:  # URLError, HTTPError, timeouts, refused connections
            from segkit.core.errors import SegkitError

            reason = getattr(exc, "reason", None) or exc.strerror or exc
            raise SegkitError(
                f"could not download {filename} ({reason}): download it where there is "
                "network access and pass the file as load_from=PATH (backbone weights: "
                "cfg_options={'model.backbone.init_cfg.checkpoint': PATH}), or train with "
                "weights=none") from None

    load_from_http.segkit_wrapped = True
    ckpt_module.CheckpointLoader.register_scheme(("http://", "https://"), load_from_http,
                                                 force=True)


def apply() -> None:
    """Apply every workaround once (idempotent)."""
    global _applied
    if _applied:
        return
    install_mmcv_ext_stand_in()
    with _without_import_notes(), _without_line_nms_note():
        import mmseg.datasets  # noqa: F401
        import mmseg.models  # noqa: F401  (registers mmseg's modules)

        _repair_mask_heads()  # mmseg imported before segkit: its heads missed mmdet

    _register_bf16_wrapper()
    _allow_cpu_torchrun()
    _explain_failed_downloads()
    resolve_config_scopes()
    try:
        with _without_import_notes(), _without_line_nms_note():
            _patch_mask2former_slide()
            import mmdet.datasets  # noqa: F401  (imported by Mask2Former's configs)
    except ImportError:  # mmdet unavailable: Mask2Former cannot be built anyway
        pass
    _applied = True
