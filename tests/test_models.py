"""The model catalogue: every entry builds and predicts on the CPU; weights, configs, ConvNeXt."""

import re

import pytest
import torch

from segkit.core.errors import ParameterError
from segkit.train.backbones import (
    CONVNEXT_ARCHS,
    ConvNeXt,
    ConvNeXtBlock,
    EfficientNetLite0,
    lite0_weights_path,
)
from segkit.train.models import CATALOGUE, mmseg_configs_dir, model_config, zoo_checkpoint

# CPU-sized entries (plus the ConvNeXt that segkit provides) run by default; the rest are
# correct too but take minutes on two cores, so `make test-slow` runs them.
FAST = ("efficientnet_lite0", "segformer_b0", "fcn_r50", "upernet_convnext_t")
SLOW = tuple(name for name in CATALOGUE if name not in FAST)


def build(model_cfg):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    model = MODELS.build(model_cfg)
    model.init_weights()
    return model.eval()


def predict(model, size=64):
    """One real inference pass (data preprocessor included) on a random image."""
    from mmseg.structures import SegDataSample

    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size)))
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
        return model.predict(data["inputs"], data["data_samples"])[0]


def check_builds_and_predicts(name):
    model_cfg, load_from = model_config(name, num_classes=11, weights="none")
    assert load_from is None
    out = predict(build(model_cfg))
    assert out.seg_logits.data.shape == (11, 64, 64)
    assert out.pred_sem_seg.data.shape == (1, 64, 64)
    assert torch.isfinite(out.seg_logits.data).all()
    assert int(out.pred_sem_seg.data.max()) < 11


@pytest.mark.parametrize("name", FAST)
def test_small_catalogue_models_build_and_predict(name):
    check_builds_and_predicts(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_every_other_catalogue_model_builds_and_predicts(name):
    check_builds_and_predicts(name)


def test_catalogue_lists_the_config_files_mmseg_installs():
    for spec in CATALOGUE.values():
        if spec.config:
            assert (mmseg_configs_dir() / spec.config).exists(), spec.config


# --- EfficientNet-Lite0 -----------------------------------------------------------------------

def test_lite0_backbone_weights_come_from_the_wheel():
    model_cfg, load_from = model_config("efficientnet_lite0", num_classes=11, weights="backbone")
    assert load_from is None
    model = build(model_cfg)  # init_weights must not overwrite the ImageNet weights
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    backbone = model.backbone
    assert torch.equal(backbone.stem[0].weight, state["_conv_stem.weight"])
    last = len(backbone.blocks) - 1
    key = f"_blocks.{last}._project_conv.weight"
    assert torch.equal(backbone.blocks[last]._project_conv.weight, state[key])
    assert torch.equal(backbone.stem[1].running_mean, state["_bn0.running_mean"])

    untrained = build(model_config("efficientnet_lite0", num_classes=11, weights="none")[0])
    assert not torch.equal(untrained.backbone.stem[0].weight, state["_conv_stem.weight"])


def test_lite0_features_at_strides_4_to_32():
    net = EfficientNetLite0(pretrained=False).eval()
    with torch.no_grad():
        feats = net(torch.zeros(2, 3, 96, 128))
    assert [tuple(f.shape) for f in feats] == [
        (2, 24, 24, 32), (2, 40, 12, 16), (2, 112, 6, 8), (2, 320, 3, 4)]
    assert EfficientNetLite0.out_channels == (24, 40, 112, 320)


# --- model_config -----------------------------------------------------------------------------

def test_unknown_model_and_weights_are_rejected_with_the_allowed_values():
    with pytest.raises(ParameterError, match="unknown model 'segformer_b9'.*segformer_b0.*"
                                             "efficientnet_lite0|efficientnet_lite0.*segformer_b0"):
        model_config("segformer_b9", num_classes=11)
    with pytest.raises(ParameterError, match="weights='imagenet'; allowed: auto, none, backbone, zoo"):
        model_config("segformer_b0", num_classes=11, weights="imagenet")
    with pytest.raises(ParameterError, match="not found"):
        model_config("/nonexistent/config.py", num_classes=11)
    with pytest.raises(ParameterError, match="no zoo checkpoint"):
        model_config("efficientnet_lite0", num_classes=11, weights="zoo")


def test_zoo_weights_come_from_the_installed_metafile():
    url = zoo_checkpoint(CATALOGUE["segformer_b0"].config)
    assert url.startswith("https://") and url.endswith(".pth") and "segformer" in url
    model_cfg, load_from = model_config("segformer_b0", num_classes=11, weights="zoo")
    assert load_from == url
    assert "init_cfg" not in model_cfg["backbone"]  # the whole checkpoint replaces it
    assert model_cfg["decode_head"]["num_classes"] == 11
    _, auto = model_config("segformer_b0", num_classes=11)  # "auto" means zoo for zoo models
    assert auto == url
    backbone_cfg, none = model_config("upernet_convnext_t", num_classes=11, weights="backbone")
    assert none is None
    assert backbone_cfg["backbone"]["init_cfg"]["prefix"] == "backbone."
    assert backbone_cfg["backbone"]["init_cfg"]["checkpoint"].startswith("https://")


def test_mask2former_keeps_its_no_object_weight_per_class():
    model_cfg, _ = model_config("mask2former_swin_t", num_classes=11, weights="none")
    weights = model_cfg["decode_head"]["loss_cls"]["class_weight"]
    assert len(weights) == 12 and weights[:11] == [1.0] * 11 and weights[-1] == 0.1


def test_a_users_config_file_works(tmp_path):
    """A user's own config, inheriting from an installed one (whose custom_imports name
    mmpretrain, which cannot import here) and changing the head."""
    base = mmseg_configs_dir() / CATALOGUE["upernet_convnext_t"].config
    path = tmp_path / "my_convnext.py"
    path.write_text(f"_base_ = [{str(base)!r}]\n"
                    "model = dict(decode_head=dict(channels=64),\n"
                    "             auxiliary_head=dict(channels=32))\n")
    model_cfg, load_from = model_config(str(path), num_classes=5, weights="none")
    assert load_from is None
    model = build(model_cfg)
    assert isinstance(model.backbone, ConvNeXt)
    assert model.decode_head.channels == 64 and model.decode_head.num_classes == 5
    out = predict(model)
    assert out.seg_logits.data.shape == (5, 64, 64)


def test_sync_bn_becomes_bn_on_one_device():
    from torch import nn

    single, _ = model_config("fcn_r50", num_classes=11, weights="none")
    assert "SyncBN" not in repr(single)
    model = build(single)
    kinds = {type(m) for m in model.modules()}
    assert nn.BatchNorm2d in kinds and nn.SyncBatchNorm not in kinds


# --- ConvNeXt ---------------------------------------------------------------------------------

def test_upernet_convnext_t_uses_segkits_convnext_and_trains_one_step():
    model_cfg, _ = model_config("upernet_convnext_t", num_classes=11, weights="none")
    assert model_cfg["backbone"]["type"] == "ConvNeXt"  # mmpretrain cannot import here
    model = build(model_cfg).train()
    assert isinstance(model.backbone, ConvNeXt) and model.backbone.channels == [96, 192, 384, 768]
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    torch.manual_seed(0)
    samples = []
    for _ in range(2):
        s = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                        pad_shape=(64, 64)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 11, (1, 64, 64)))
        samples.append(s)
    losses = model.loss(torch.randn(2, 3, 64, 64), samples)
    total = sum(v for k, v in losses.items() if "loss" in k)
    total.backward()
    grad = model.backbone.stages[0][0].depthwise_conv.weight.grad
    assert torch.isfinite(total) and grad is not None and grad.abs().sum() > 0


def _key_pattern(key: str) -> str:
    parts = ["N" if p.isdigit() else re.sub(r"^norm\d+$", "normN", p) for p in key.split(".")]
    return ".".join(parts)


def test_convnext_parameter_names_follow_mmpretrain():
    net = ConvNeXt("tiny", out_indices=[0, 1, 2, 3], layer_scale_init_value=1.0,
                   gap_before_final_norm=False)
    state = net.state_dict()
    block = ("depthwise_conv.weight", "depthwise_conv.bias", "norm.weight", "norm.bias",
             "pointwise_conv1.weight", "pointwise_conv1.bias", "pointwise_conv2.weight",
             "pointwise_conv2.bias", "gamma")
    assert {_key_pattern(k) for k in state} == (
        {"downsample_layers.N.N.weight", "downsample_layers.N.N.bias",
         "normN.weight", "normN.bias"} | {f"stages.N.N.{b}" for b in block})
    # stem: conv then norm; between stages: norm then conv (the order fixes the indices)
    assert state["downsample_layers.0.0.weight"].shape == (96, 3, 4, 4)
    assert state["downsample_layers.0.1.weight"].shape == (96,)
    assert state["downsample_layers.2.0.weight"].shape == (192,)
    assert state["downsample_layers.2.1.weight"].shape == (384, 192, 2, 2)
    assert state["stages.2.8.depthwise_conv.weight"].shape == (384, 1, 7, 7)
    assert state["stages.2.8.pointwise_conv1.weight"].shape == (1536, 384)  # Linear: 2-D
    assert state["stages.2.8.pointwise_conv2.weight"].shape == (384, 1536)
    assert "stages.2.9.gamma" not in state and "stages.3.2.gamma" in state
    assert [k for k in state if k.startswith("norm3")] == ["norm3.weight", "norm3.bias"]
    assert torch.equal(state["stages.1.0.gamma"], torch.ones(192))  # layer_scale_init_value
    # The published ConvNeXt-T has 28.59M parameters, 768 x 1000 + 1000 of them in its
    # ImageNet classifier: the rest, with the final norm as norm3, is 27.82M.
    last_only = ConvNeXt("tiny", out_indices=[3])
    assert sum(p.numel() for p in last_only.parameters()) == 27_820_128


def test_convnext_checkpoint_with_backbone_prefix_loads_strictly(tmp_path):
    """The path mmseg's config takes: init_cfg Pretrained with prefix 'backbone.'."""
    source = ConvNeXt("atto", out_indices=[0, 1, 2, 3], gap_before_final_norm=False)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()}
                | {"head.fc.weight": torch.zeros(1000, 320)}}, path)
    target = ConvNeXt("atto", out_indices=[0, 1, 2, 3], gap_before_final_norm=False,
                      init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone."))
    target.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    from mmengine.runner.checkpoint import _load_checkpoint_to_model

    _load_checkpoint_to_model(ConvNeXt("atto", out_indices=[0, 1, 2, 3]),
                              {k: v for k, v in source.state_dict().items()}, strict=True)


def test_convnext_block_computes_the_papers_block():
    """dwconv 7x7 -> LayerNorm over channels -> 1x1 (x4) -> GELU -> 1x1 -> scale -> + input,
    written here with channels-first ops to check the channels-last implementation."""
    torch.manual_seed(0)
    block = ConvNeXtBlock(8, layer_scale_init_value=0.5).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 8, 9, 11)
    y = block.depthwise_conv(x)
    mean, var = y.mean(1, keepdim=True), y.var(1, unbiased=False, keepdim=True)
    y = (y - mean) / torch.sqrt(var + 1e-6)
    y = y * block.norm.weight.view(1, -1, 1, 1) + block.norm.bias.view(1, -1, 1, 1)
    y = torch.nn.functional.conv2d(y, block.pointwise_conv1.weight[:, :, None, None],
                                   block.pointwise_conv1.bias)
    y = torch.nn.functional.gelu(y)
    y = torch.nn.functional.conv2d(y, block.pointwise_conv2.weight[:, :, None, None],
                                   block.pointwise_conv2.bias)
    expected = x + y * block.gamma.view(1, -1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_convnext_options():
    assert CONVNEXT_ARCHS["large"] == ([3, 3, 27, 3], [192, 384, 768, 1536])
    x = torch.randn(1, 3, 64, 64)
    # classification layout: pooled, normalised vectors; negative out_indices count from the end
    net = ConvNeXt("atto", out_indices=-1).eval()
    assert net.out_indices == [3]
    with torch.no_grad():
        assert net(x)[0].shape == (1, 320)
    # V2: GRN and no layer scale
    v2 = ConvNeXt("atto", use_grn=True, layer_scale_init_value=0.0)
    keys = set(v2.state_dict())
    assert "stages.0.0.grn.gamma" in keys and "stages.0.0.grn.beta" in keys
    assert not any(k.endswith(".gamma") and ".grn." not in k for k in keys)
    # stochastic depth rises linearly to drop_path_rate over all blocks
    deep = ConvNeXt("atto", drop_path_rate=0.3)
    assert deep.stages[0][0].drop_path.__class__.__name__ == "Identity"
    assert deep.stages[3][1].drop_path.rate == pytest.approx(0.3)
    # frozen stages keep no gradients and stay in eval mode when training
    frozen = ConvNeXt("atto", frozen_stages=2).train()
    assert not any(p.requires_grad for p in frozen.stages[1].parameters())
    assert all(p.requires_grad for p in frozen.stages[2].parameters())
    assert not frozen.stages[0].training and frozen.stages[2].training
    with pytest.raises(ValueError, match="allowed: atto"):
        ConvNeXt("gigantic")
    ConvNeXt(dict(depths=[1, 1], channels=[8, 16]), out_indices=[0, 1])
