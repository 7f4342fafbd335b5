"""One test per workaround in segkit.train.compat, each showing the problem it works around."""

import importlib.machinery
import importlib.util
import sys

import pytest
import torch

from segkit.train import compat
from segkit.train.models import model_config

compat.apply()


def build(model_cfg):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    model = MODELS.build(model_cfg)
    model.init_weights()
    return model


# 1. mmcv without compiled ops -----------------------------------------------------------------

def test_mmcv_stand_in_lets_mmdet_import_and_fails_loudly_when_an_op_is_called():
    if compat.mmcv_has_compiled_ops():
        pytest.skip("this environment has mmcv's compiled ops: no stand-in is installed")
    assert getattr(sys.modules["mmcv._ext"], "__segkit_stand_in__", False)
    # What needed the stand-in: mmdet imports mmcv.ops at top level.
    import mmcv.ops
    from mmdet.models.dense_heads import Mask2FormerHead as MMDetHead
    from mmseg.models.decode_heads import Mask2FormerHead

    assert issubclass(Mask2FormerHead, MMDetHead)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
    with pytest.raises(compat.MissingCompiledOp, match=r"'nms'.*MAX_JOBS=\d+ pip install "
                                                        r".*onedl-mmcv==2\.3\.6"):
        mmcv.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
    with pytest.raises(AttributeError):  # dunder lookups (pickle, inspect) must not get a stub
        sys.modules["mmcv._ext"].__file__  # noqa: B018


def test_mmcv_stand_in_is_not_installed_over_real_compiled_ops(monkeypatch):
    """With a real `mmcv._ext` findable (simulated), nothing is installed or replaced."""
    monkeypatch.delitem(sys.modules, "mmcv._ext", raising=False)
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "mmcv._ext":
            return importlib.machinery.ModuleSpec("mmcv._ext", loader=None,
                                                  origin="/site-packages/mmcv/_ext.so")
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert compat.mmcv_has_compiled_ops()
    assert compat.install_mmcv_ext_stand_in() is False
    assert "mmcv._ext" not in sys.modules
    # ... and an already imported real module is left alone too
    real = type(sys)("mmcv._ext")
    monkeypatch.setitem(sys.modules, "mmcv._ext", real)
    assert compat.install_mmcv_ext_stand_in() is False
    assert sys.modules["mmcv._ext"] is real


def test_mmcv_stand_in_is_installed_once_when_ops_are_missing(monkeypatch):
    monkeypatch.delitem(sys.modules, "mmcv._ext", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "mmcv._ext" else
                        importlib.machinery.ModuleSpec(name, None))
    assert compat.install_mmcv_ext_stand_in() is True
    stand_in = sys.modules["mmcv._ext"]
    assert stand_in.__spec__.name == "mmcv._ext"  # mmengine calls find_spec on it
    assert not compat.mmcv_has_compiled_ops()
    assert compat.install_mmcv_ext_stand_in() is False
    assert sys.modules["mmcv._ext"] is stand_in


# 2. bf16 autocast on CPU ----------------------------------------------------------------------

def test_mmengine_amp_wrapper_refuses_the_cpu():
    """Why segkit has its own wrapper (if mmengine learns CPU autocast, this fails)."""
    from mmengine.optim import AmpOptimWrapper

    if torch.cuda.is_available():
        pytest.skip("the refusal is about machines without CUDA")
    with pytest.raises(Exception, match="(?i)cuda|npu|mlu|musa|device"):
        AmpOptimWrapper(optimizer=torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))


def test_cpu_bf16_wrapper_runs_the_training_forward_in_bf16():
    from mmengine.optim import build_optim_wrapper
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    model = build(model_config("segformer_b0", num_classes=11, weights="none")[0]).train()
    wrapper = build_optim_wrapper(model, dict(type="CPUBF16OptimWrapper",
                                              optimizer=dict(type="SGD", lr=0.01)))
    seen = {}

    def record(module, args, out):  # returns None: the output is left as it is
        seen["dtype"] = out.dtype

    model.decode_head.conv_seg.register_forward_hook(record)
    torch.manual_seed(0)
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 11, (1, 64, 64)))
        samples.append(sample)
    data = dict(inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)] * 2,
                data_samples=samples)
    before = model.decode_head.conv_seg.weight.detach().clone()
    log = model.train_step(data, wrapper)
    assert seen["dtype"] == torch.bfloat16
    assert model.decode_head.conv_seg.weight.dtype == torch.float32  # master weights stay fp32
    assert not torch.equal(before, model.decode_head.conv_seg.weight)
    assert torch.isfinite(log["loss"])
    with wrapper.optim_context(model):
        assert torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3)).dtype == \
            torch.bfloat16
    assert torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3)).dtype == torch.float32


@pytest.mark.parametrize("native_bf16", [True, False])
def test_inference_autocast_is_bf16_on_a_bf16_cpu_and_off_otherwise(native_bf16, monkeypatch):
    monkeypatch.setattr(compat, "cpu_has_fast_bf16", lambda: native_bf16)
    a, b = torch.randn(2, 3), torch.randn(3, 4)
    with compat.autocast("cpu"):
        assert (a @ b).dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    with compat.autocast("cpu", enabled=False):
        assert (a @ b).dtype == torch.float32


# 3. Mask2Former slide inference ---------------------------------------------------------------

@pytest.fixture(scope="module")
def mask2former():
    model_cfg, _ = model_config("mask2former_swin_t", num_classes=11, weights="none")
    model_cfg["test_cfg"] = dict(mode="slide", crop_size=(64, 64), stride=(48, 48))
    return build(model_cfg).eval()


def _slide_predict(model):
    from mmseg.structures import SegDataSample

    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 80, 112), dtype=torch.uint8)
    sample = SegDataSample(metainfo=dict(img_shape=(80, 112), ori_shape=(80, 112)))
    with torch.no_grad():
        # the data preprocessor adds pad_shape, the key that trips Mask2Former's predict
        data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
        assert "pad_shape" in data["data_samples"][0].metainfo
        return model.predict(data["inputs"], data["data_samples"])[0]


def test_mask2former_slide_inference_returns_the_image_size(mask2former):
    out = _slide_predict(mask2former)
    assert out.seg_logits.data.shape == (11, 80, 112)
    assert out.pred_sem_seg.data.shape == (1, 80, 112)
    assert torch.isfinite(out.seg_logits.data).all()


def test_mask2former_slide_inference_fails_without_the_fix(mask2former, monkeypatch):
    from mmseg.models.decode_heads import Mask2FormerHead

    patched = Mask2FormerHead.predict
    assert patched.__segkit_patched__
    monkeypatch.setattr(Mask2FormerHead, "predict", patched.__wrapped__)
    with pytest.raises(RuntimeError, match="size of tensor|must match"):
        _slide_predict(mask2former)


def test_mask2former_fix_leaves_whole_inference_alone(mask2former):
    """Outside slide mode the masks still go to the padded size, as upstream does."""
    head = mask2former.decode_head
    torch.manual_seed(0)
    feats = [torch.randn(1, c, 32 // 2 ** i, 32 // 2 ** i)
             for i, c in enumerate((96, 192, 384, 768))]
    metas = [dict(img_shape=(120, 120), pad_shape=(128, 128), ori_shape=(120, 120))]
    with torch.no_grad():
        whole = head.predict(feats, metas, dict(mode="whole"))
        slide = head.predict(feats, metas, dict(mode="slide"))
    assert whole.shape[-2:] == (128, 128)
    assert slide.shape[-2:] == (120, 120)  # the crop's own size
    assert metas[0]["pad_shape"] == (128, 128)  # the caller's metas are not modified


# 4. SyncBN on one device ----------------------------------------------------------------------

def test_sync_bn_to_bn_replaces_every_sync_bn_and_copies():
    from mmengine.config import ConfigDict

    cfg = ConfigDict(backbone=dict(norm_cfg=dict(type="SyncBN", requires_grad=True)),
                     heads=[dict(norm_cfg=dict(type="SyncBN")), dict(norm_cfg=dict(type="GN"))],
                     scales=(1, 2))
    out = compat.sync_bn_to_bn(cfg)
    assert out["backbone"]["norm_cfg"] == dict(type="BN", requires_grad=True)
    assert [h["norm_cfg"]["type"] for h in out["heads"]] == ["BN", "GN"]
    assert out["scales"] == (1, 2)
    assert cfg["backbone"]["norm_cfg"]["type"] == "SyncBN"  # the input is left as it was


_TWO_CPU_PROCESSES = """
import sys, torch, torch.distributed as dist, torch.multiprocessing as mp

def work(rank, store):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    x = torch.randn(2, 4, 3, 3)
    torch.nn.BatchNorm2d(4).train()(x)  # plain BN is fine
    try:
        torch.nn.SyncBatchNorm(4).train()(x)
    except ValueError as e:
        print("SyncBN failed:", e, flush=True)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(work, args=(sys.argv[1],), nprocs=2)
"""


def test_sync_bn_fails_in_a_multi_process_cpu_run(tmp_path):
    """What keep_sync_bn avoids: SyncBN under torchrun on CPUs (gloo) fails in forward."""
    import subprocess

    script = tmp_path / "two_cpu_processes.py"
    script.write_text(_TWO_CPU_PROCESSES)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("SyncBN failed:") == 2 and "GPU" in done.stdout


def test_sync_bn_is_kept_only_when_distributed_on_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not compat.keep_sync_bn(True) and not compat.keep_sync_bn(False)
    cpu_multi, _ = model_config("fcn_r50", num_classes=11, weights="none", distributed=True)
    assert "SyncBN" not in repr(cpu_multi)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compat.keep_sync_bn(True) and not compat.keep_sync_bn(False)
    gpu_multi, _ = model_config("fcn_r50", num_classes=11, weights="none", distributed=True)
    assert gpu_multi["backbone"]["norm_cfg"]["type"] == "SyncBN"
    assert gpu_multi["decode_head"]["norm_cfg"]["type"] == "SyncBN"
    gpu_single, _ = model_config("fcn_r50", num_classes=11, weights="none")
    assert "SyncBN" not in repr(gpu_single)
