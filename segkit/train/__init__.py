"""Training with mmsegmentation: configs built from a recipe, models and backbones, losses,
augmentations, data sources and cache, and the parts registered with mmseg by role (datasets,
evaluation, hooks, optimizers, runner).

Importing this package applies segkit's compatibility fixes first (segkit.train.compat) and
then registers every part; a saved run config names it in `custom_imports`.
"""
# ruff: noqa: E402  (compat.apply() runs before any mmseg or mmdet model module imports)

from segkit.train import compat

compat.apply()  # before mmseg's and mmdet's models import: the mmcv._ext stand-in

from segkit.train.backbones import (
    CONVNEXT_ARCHS,
    ChannelsFirstLayerNorm,
    ConvNeXt,
    ConvNeXtBlock,
    DropPath,
    EfficientNetLite0,
    GlobalResponseNorm,
    lite0_weights_path,
)
from segkit.train.batch_mix import (
    MixSegDataPreProcessor,
    SegClassMix,
    SegCutMix,
)
from segkit.train.compat import (
    MissingCompiledOp,
    apply,
    autocast,
    cpu_has_fast_bf16,
    install_mmcv_ext_stand_in,
    keep_sync_bn,
    mmcv_has_compiled_ops,
    quiet_model_loading,
    resolve_config_scopes,
    sync_bn_to_bn,
)
from segkit.train.config_modes import (
    WHOLE_MODE_PARAMETERS,
    apply_cfg_options,
    trained_settings,
    warn_ignored,
    whole_config,
)
from segkit.train.data_cache import (
    FORMAT,
    FastPhotoMetricDistortion,
    FastRandomCrop,
    ImageCache,
    LoadCachedImageAndLabel,
    build_cache,
    cache_dir_for,
    cache_key,
    cached_pipeline,
    open_cache,
    register_transforms,
)
from segkit.train.datasets import (
    CocoSegDataset,
)
from segkit.train.evaluation import (
    SegkitIoUMetric,
)
from segkit.train.hooks import (
    ChannelsLastHook,
    RNGStateHook,
    SafeCheckpointHook,
    SegValVisualizationHook,
    TrialPruningHook,
)
from segkit.train.losses import (
    LovaszSoftmaxLoss,
    MaskedDiceLoss,
    OhemCrossEntropyLoss,
    SmoothCrossEntropyLoss,
    SoftmaxFocalLoss,
    balanced_class_weights,
)
from segkit.train.models import (
    CATALOGUE,
    ModelSpec,
    backbone_checkpoint,
    config_file_of,
    mmpretrain_importable,
    mmseg_configs_dir,
    model_config,
    resolve_config_file,
    zoo_checkpoint,
    zoo_weights,
)
from segkit.train.optimizers import (
    GroupedOptimWrapperConstructor,
    GroupOneCycleLR,
)
from segkit.train.preview import (
    augmented_samples,
    show_augmented,
)
from segkit.train.runner import (
    SegkitRunner,
)
from segkit.train.sources import (
    MIN_SIDE,
    check_image_sizes,
    check_training_data,
    data_list,
    dataset_sources,
    resize_limits,
    resolve_source,
)
from segkit.train.tracking import (
    vis_backends,
    visualization_hook,
    wandb_online,
)
from segkit.train.training import (
    build_config,
    default_run_name,
    environment_info,
    parameters_from,
    resolve_launcher,
    run,
)
from segkit.train.training_data import (
    data_record_of,
    full_data_iterations,
    training_files,
)

__all__ = [
    "MissingCompiledOp",
    "mmcv_has_compiled_ops",
    "install_mmcv_ext_stand_in",
    "cpu_has_fast_bf16",
    "autocast",
    "keep_sync_bn",
    "sync_bn_to_bn",
    "quiet_model_loading",
    "resolve_config_scopes",
    "apply",
    "CONVNEXT_ARCHS",
    "ChannelsFirstLayerNorm",
    "GlobalResponseNorm",
    "DropPath",
    "ConvNeXtBlock",
    "ConvNeXt",
    "lite0_weights_path",
    "EfficientNetLite0",
    "SegCutMix",
    "SegClassMix",
    "MixSegDataPreProcessor",
    "WHOLE_MODE_PARAMETERS",
    "apply_cfg_options",
    "warn_ignored",
    "whole_config",
    "trained_settings",
    "FORMAT",
    "cache_key",
    "cache_dir_for",
    "build_cache",
    "ImageCache",
    "open_cache",
    "LoadCachedImageAndLabel",
    "FastRandomCrop",
    "FastPhotoMetricDistortion",
    "register_transforms",
    "cached_pipeline",
    "CocoSegDataset",
    "SegkitIoUMetric",
    "RNGStateHook",
    "SegValVisualizationHook",
    "SafeCheckpointHook",
    "ChannelsLastHook",
    "TrialPruningHook",
    "SoftmaxFocalLoss",
    "MaskedDiceLoss",
    "LovaszSoftmaxLoss",
    "OhemCrossEntropyLoss",
    "SmoothCrossEntropyLoss",
    "balanced_class_weights",
    "ModelSpec",
    "CATALOGUE",
    "mmseg_configs_dir",
    "zoo_checkpoint",
    "resolve_config_file",
    "backbone_checkpoint",
    "mmpretrain_importable",
    "config_file_of",
    "zoo_weights",
    "model_config",
    "GroupOneCycleLR",
    "GroupedOptimWrapperConstructor",
    "augmented_samples",
    "show_augmented",
    "SegkitRunner",
    "resolve_source",
    "data_list",
    "check_training_data",
    "MIN_SIDE",
    "resize_limits",
    "check_image_sizes",
    "dataset_sources",
    "wandb_online",
    "vis_backends",
    "visualization_hook",
    "resolve_launcher",
    "default_run_name",
    "build_config",
    "environment_info",
    "run",
    "parameters_from",
    "training_files",
    "full_data_iterations",
    "data_record_of",
]
