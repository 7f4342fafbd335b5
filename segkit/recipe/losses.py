"""Loss texts (`ce`, `ce:1.0+lovasz:0.5`, ...) checked and turned into mmseg `loss_decode`
configs; plain data, no torch (the loss modules themselves are in segkit.train.losses).
"""

from __future__ import annotations

from segkit.core.classes import IGNORE_INDEX
from segkit.core.errors import ParameterError

# the named terms of `loss` (today's "ce", "focal", "dice", "ce+dice" are sums of them)
LOSS_TERMS = ("ce", "focal", "dice", "lovasz", "ohem", "smooth_ce")


def loss_terms(loss: str) -> list[tuple[str, float]]:
    """[(term, weight)] of a loss text: terms joined by `+`, each `name` or `name:weight`,
    e.g. "ce:1.0+lovasz:0.5" (today's "ce+dice" is "ce:1+dice:1")."""
    from segkit.core.options import named_item

    if not isinstance(loss, str) or not loss.strip():
        raise ParameterError(f"loss={loss!r}; expected terms like 'ce', 'focal' or "
                             f"'ce:1.0+lovasz:0.5'; terms: {', '.join(LOSS_TERMS)}")
    terms = []
    for part in loss.split("+"):
        name, weight, _ = named_item("loss", part.strip(), number_key="")
        if name not in LOSS_TERMS:
            raise ParameterError(f"loss={loss!r}; allowed: {', '.join(LOSS_TERMS)}, joined by "
                                 f"+, each with an optional :weight (no term {name!r})")
        if weight is not None and weight < 0:
            raise ParameterError(f"loss={loss!r}: the weight of {name} is negative")
        terms.append((name, 1.0 if weight is None else weight))
    names = [t[0] for t in terms]
    if len(set(names)) != len(names):
        raise ParameterError(f"loss={loss!r} names a term twice; give it one weight instead")
    return terms


def check_loss(loss: str) -> str:
    """The `loss` text, checked (terms and weights)."""
    loss_terms(loss)
    return loss


def _term_config(name: str, weights, loss_weight: float) -> dict:
    if name == "ce":
        # avg_non_ignore: average over labelled pixels only (pseudo labels ignore many). mmseg
        # mis-indexes when it is combined with class weights, whose weighted mean already
        # skips ignored pixels, so it is only set without them.
        return dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=loss_weight,
                    class_weight=weights, avg_non_ignore=weights is None, loss_name="loss_ce")
    if name == "dice":  # MaskedDiceLoss: mmseg's DiceLoss does not skip ignored pixels
        return dict(type="MaskedDiceLoss", loss_weight=loss_weight, ignore_index=IGNORE_INDEX,
                    loss_name="loss_dice")
    if name == "focal":
        return dict(type="SoftmaxFocalLoss", gamma=2.0, class_weight=weights,
                    loss_weight=loss_weight, loss_name="loss_focal")
    if name == "lovasz":
        return dict(type="LovaszSoftmaxLoss", classes="present", per_image=False,
                    class_weight=weights, loss_weight=loss_weight, loss_name="loss_lovasz")
    if name == "ohem":
        return dict(type="OhemCrossEntropyLoss", thresh=0.7, min_kept=0.1, class_weight=weights,
                    loss_weight=loss_weight, loss_name="loss_ohem")
    return dict(type="SmoothCrossEntropyLoss", smoothing=0.1, class_weight=weights,
                loss_weight=loss_weight, loss_name="loss_smooth_ce")


def loss_config(loss: str, class_weights, num_classes: int) -> list[dict] | dict:
    """The mmseg `loss_decode` entry of a loss text (see loss_terms), with class weights or
    None: one config for one term, a list for a sum (mmseg adds a head's losses)."""
    terms = loss_terms(loss)
    if class_weights is not None and len(class_weights) != num_classes:
        raise ParameterError(f"class_weights has {len(class_weights)} values; "
                             f"{num_classes} classes need one each")
    weights = list(map(float, class_weights)) if class_weights is not None else None
    configs = [_term_config(name, weights, float(w)) for name, w in terms]
    return configs[0] if len(configs) == 1 else configs
