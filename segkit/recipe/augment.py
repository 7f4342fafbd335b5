"""Augmentations by name: mmseg's own transforms where they exist, albumentations (through
mmseg's `Albu`) for the rest, and batch mixes (CutMix, ClassMix) in the data preprocessor.

`augment` is a list of items, each `"name"`, `"name:prob"`, `{"name": prob}` or
`{"name": {"prob": p, option: value, ...}}`; options are the transform's own arguments:

    augment=["flip", "vflip:0.3", {"rotate": {"prob": 0.5, "degree": 30}}, "clahe", "cutmix"]

| name | transform (options as its arguments) | default |
|---|---|---|
| resize_crop | RandomResize (ratio_range) + RandomCrop (cat_max_ratio); without it Resize + RandomCrop | |
| mosaic | RandomMosaic (four images in one; CocoSegDataset supplies the other three) | prob 0.5 |
| flip, vflip | RandomFlip (prob, direction: horizontal, vertical, diagonal) | prob 0.5 |
| rotate | RandomRotate (prob, degree, pad_val, seg_pad_val: 255 = ignored) | prob 0.5, 30 degrees |
| rot_flip | RandomRotFlip's rot90 + flip (prob: its flip_prob) | prob 0.5 |
| photometric | PhotoMetricDistortion (brightness_delta, contrast_range, ...) | always |
| clahe | CLAHE (clip_limit, tile_grid_size) | always |
| cutout | RandomCutOut (prob, n_holes, cutout_ratio, fill_in, seg_fill_in) | prob 0.5 |
| noise, brightness_contrast, hsv, blur, grid_distortion, elastic | albumentations' GaussNoise, RandomBrightnessContrast, HueSaturationValue, Blur, GridDistortion, ElasticTransform (their arguments) | prob 0.5 |
| albu.<Name> | any albumentations transform by its class name, e.g. `albu.RandomGamma:0.3` | prob 0.5 |
| cutmix | a box of another image of the batch pasted with its labels (Yun et al., 2019) | prob 0.5, alpha 1 |
| classmix | the pixels of half the classes of another image pasted with them (Olsson et al., 2021) | prob 0.5 |

A probability on a transform that has none of its own (photometric, clahe) wraps it
in mmcv's `RandomApply`. Order in the pipeline: loading, the resize and crop, then the
geometric transforms in list order, then the colour and erasing ones in list order, then
packing (so today's `flip`, `resize_crop`, `photometric` make the configs they always made).
MixUp is not offered: mmseg's decode heads train on hard label maps, and a blend of two label
maps has no hard label; CutMix and ClassMix mix images and labels consistently.
albumentations is an optional extra: `pip install -e ".[albu]"`.

Example:
    >>> check_augment(["flip", "rotate:0.3"])
    ['flip', 'rotate:0.3']
"""

from __future__ import annotations

from segkit.core.errors import ParameterError
from segkit.core.options import check_probability, named_item

# name: (mmseg transform, kind, default options, the transform's own probability argument)
MMSEG_TRANSFORMS = {
    "flip": ("RandomFlip", "geometric", {"prob": 0.5}, "prob"),
    "vflip": ("RandomFlip", "geometric", {"prob": 0.5, "direction": "vertical"}, "prob"),
    "rotate": ("RandomRotate", "geometric",
               {"prob": 0.5, "degree": 30, "pad_val": 0, "seg_pad_val": 255}, "prob"),
    # rotate_prob 0: RandomRotFlip's free rotation interpolates label maps bilinearly (it mixes
    # class ids); its rot90 + flip half is exact. Free angles: `rotate` (nearest labels).
    "rot_flip": ("RandomRotFlip", "geometric", {"rotate_prob": 0.0, "flip_prob": 0.5},
                 "flip_prob"),
    "photometric": ("PhotoMetricDistortion", "colour", {}, None),
    "clahe": ("CLAHE", "colour", {}, None),
    "cutout": ("RandomCutOut", "erasing",
               {"prob": 0.5, "n_holes": (1, 3), "cutout_ratio": [(0.1, 0.1), (0.2, 0.2)]},
               "prob"),
}
ALBU_TRANSFORMS = {
    "noise": ("GaussNoise", "colour"),
    "brightness_contrast": ("RandomBrightnessContrast", "colour"),
    "hsv": ("HueSaturationValue", "colour"),
    "blur": ("Blur", "colour"),
    "grid_distortion": ("GridDistortion", "geometric"),
    "elastic": ("ElasticTransform", "geometric"),
}
BATCH_MIXES = {"cutmix": "SegCutMix", "classmix": "SegClassMix"}
GEOMETRY = ("resize_crop", "mosaic")
AUGMENTATIONS = (*GEOMETRY, *MMSEG_TRANSFORMS, *ALBU_TRANSFORMS, *BATCH_MIXES)
KIND_ORDER = ("geometric", "colour", "erasing")


def _spec(item) -> tuple[str, float | None, dict]:
    name, prob, options = named_item("augment", item)
    if name == "mixup":
        raise ParameterError("augment 'mixup' is not offered: mmseg's decode heads train on "
                             "hard label maps, which a blend of two images has not; use "
                             "'cutmix' or 'classmix' (images and labels mixed together)")
    if name not in AUGMENTATIONS and not (name.startswith("albu.") and len(name) > 5):
        raise ParameterError(f"augment has {name!r}; allowed: {', '.join(AUGMENTATIONS)}, "
                             "or albu.<an albumentations transform>")
    check_probability("augment", name, prob)
    return name, prob, options


def check_augment(value: list) -> list:
    """The `augment` list, each item checked (names, probabilities, option mappings); a
    ParameterError names the item and what is allowed."""
    specs = [_spec(item) for item in value]
    names = [s[0] for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1 and n in GEOMETRY + tuple(
        BATCH_MIXES)})
    if repeated:
        raise ParameterError(f"augment lists {repeated} more than once")
    if any(n.startswith("albu.") or n in ALBU_TRANSFORMS for n in names):
        _need_albumentations()
    for name, _, options in specs:
        if options:
            _check_option_values(name, options)
    return list(value)


_TRIED: dict = {}  # (name, options) -> None or the problem: a search checks one recipe often


def _check_option_values(name: str, options: dict) -> None:
    """Build the augmentation with its options and run it once on a tiny image, so that an
    option of the wrong type (`{rotate: {degree: abc}}`) fails at parameter-check time, not
    inside the first training iteration: a ParameterError naming the augmentation and the
    option."""
    key = (name, repr(sorted(options.items(), key=lambda kv: kv[0])))
    if key not in _TRIED:
        problem = _try_options(name, options)
        if problem and len(options) > 1:  # which option: the first that fails on its own
            culprit = next((k for k in options if _try_options(name, {k: options[k]})), None)
            if culprit is not None:
                problem = (culprit, _try_options(name, {culprit: options[culprit]})[1])
        _TRIED[key] = problem
    problem = _TRIED[key]
    if problem:
        option, reason = problem
        where = f"option {option}={options[option]!r}" if option in options else \
            f"options {options!r}"
        raise ParameterError(f"augment {name}: {where} does not work ({reason}); see "
                             "segkit.recipe.augment for what each augmentation takes")


def _try_options(name: str, options: dict) -> tuple[str, str] | None:
    """None when the augmentation runs with `options`, else (option or "", reason)."""
    import contextlib
    import io

    import numpy as np

    rng = np.random.default_rng(0)
    sample = dict(img=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                  gt_seg_map=rng.integers(0, 3, (32, 32), dtype=np.uint8),
                  seg_fields=["gt_seg_map"], img_shape=(32, 32), ori_shape=(32, 32))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the fork's "Could not import OneDL"
            if name in MMSEG_TRANSFORMS or name == "resize_crop":
                from mmseg.registry import TRANSFORMS

                if name == "resize_crop":
                    steps = _geometry({name: (None, options)}, (32, 32), (16, 16))
                else:
                    steps = [_mmseg_transform(name, None, options)]
                    prob_arg = MMSEG_TRANSFORMS[name][3]
                    if prob_arg:
                        steps[0][prob_arg] = 1.0  # run it, not skip it at random
                for step in steps:
                    sample = TRANSFORMS.build(step)(sample)
            elif name in ALBU_TRANSFORMS or name.startswith("albu."):
                import albumentations

                step = _albu_transform(name, None, options)
                cls = getattr(albumentations, step.pop("type"))
                step["p"] = 1.0
                cls(**step)(image=sample["img"], mask=sample["gt_seg_map"])
            elif name == "cutmix":
                alpha = options.get("alpha", 1.0)
                if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or \
                        not alpha > 0:
                    return "alpha", "a positive number is needed"
    except ParameterError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the transform is the option's
        option = next(iter(options)) if len(options) == 1 else ""
        return option, " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
    return None


def _need_albumentations() -> None:
    import importlib.util

    if importlib.util.find_spec("albumentations") is None:
        raise ParameterError("augment names albumentations transforms, but albumentations is "
                             "not installed: pip install -e \".[albu]\"")


def _check_arguments(transform: str, options: dict, owner) -> None:
    import inspect

    allowed = [p for p in inspect.signature(owner).parameters if p not in ("self", "args",
                                                                            "kwargs")]
    unknown = sorted(set(options) - set(allowed))
    if unknown and not any(p.kind == p.VAR_KEYWORD
                           for p in inspect.signature(owner).parameters.values()):
        raise ParameterError(f"augment {transform}: unknown options {unknown}; allowed: "
                             f"{', '.join(['prob', *allowed])}")


def _mmseg_transform(name: str, prob: float | None, options: dict) -> dict:
    from mmseg.registry import TRANSFORMS

    transform, _, defaults, prob_arg = MMSEG_TRANSFORMS[name]
    _check_arguments(name, options, TRANSFORMS.get(transform).__init__)
    if name == "rot_flip" and options.get("rotate_prob", 0):
        raise ParameterError("augment rot_flip: rotate_prob must stay 0: mmseg's RandomRotFlip "
                             "rotates label maps with bilinear interpolation, which mixes class "
                             "ids; use 'rotate' (RandomRotate, nearest) for free angles")
    cfg = dict(type=transform, **{**defaults, **options})
    if prob is not None and prob_arg is not None:
        cfg[prob_arg] = prob
    elif prob is not None:  # no probability of its own: applied with `prob` by RandomApply
        cfg = dict(type="RandomApply", transforms=[cfg], prob=prob)
    return cfg


def _albu_transform(name: str, prob: float | None, options: dict) -> dict:
    _need_albumentations()
    import albumentations

    cls_name = name[5:] if name.startswith("albu.") else ALBU_TRANSFORMS[name][0]
    cls = getattr(albumentations, cls_name, None)
    if not isinstance(cls, type):
        raise ParameterError(f"augment {name}: albumentations has no transform {cls_name!r}")
    _check_arguments(name, options, cls.__init__)
    return dict(type=cls_name, **options, p=0.5 if prob is None else prob)


def _kind(name: str) -> str:
    if name in MMSEG_TRANSFORMS:
        return MMSEG_TRANSFORMS[name][1]
    if name in ALBU_TRANSFORMS:
        return ALBU_TRANSFORMS[name][1]
    return "colour"  # albu.<Name>


def _geometry(specs: dict, scale: tuple, crop: tuple) -> list[dict]:
    if "resize_crop" in specs:
        _, options = specs["resize_crop"]
        unknown = sorted(set(options) - {"ratio_range", "cat_max_ratio"})
        if unknown:
            raise ParameterError(f"augment resize_crop: unknown options {unknown}; allowed: "
                                 "ratio_range, cat_max_ratio")
        return [dict(type="RandomResize", scale=scale,
                     ratio_range=tuple(options.get("ratio_range", (0.5, 2.0))), keep_ratio=True),
                dict(type="RandomCrop", crop_size=crop,
                     cat_max_ratio=options.get("cat_max_ratio", 0.75))]
    return [dict(type="Resize", scale=scale, keep_ratio=True),
            dict(type="RandomCrop", crop_size=crop)]


def pipelines(image_size: int, crop_size: int, augment) -> tuple[list, list]:
    """(train pipeline, val pipeline) of an `augment` list (see the module's table)."""
    specs = [_spec(item) for item in augment]
    scale, crop = (image_size, image_size), (crop_size, crop_size)
    by_name = {name: (prob, options) for name, prob, options in specs}
    train = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
    if "mosaic" in by_name:  # CocoSegDataset hands RandomMosaic its three other images
        prob, options = by_name["mosaic"]
        train.append(dict(type="RandomMosaic", img_scale=scale, **options,
                          prob=0.5 if prob is None else prob))
    train += _geometry(by_name, scale, crop)
    per_sample = [s for s in specs if s[0] not in GEOMETRY and s[0] not in BATCH_MIXES]
    per_sample.sort(key=lambda s: KIND_ORDER.index(_kind(s[0])))  # stable: list order kept
    for name, prob, options in per_sample:
        if name in MMSEG_TRANSFORMS:
            train.append(_mmseg_transform(name, prob, options))
            continue
        step = _albu_transform(name, prob, options)
        if train and train[-1].get("type") == "Albu":  # neighbours share one Albu (one RGB trip)
            train[-1]["transforms"].append(step)
        else:
            train.append(dict(type="Albu", transforms=[step]))
    train.append(dict(type="PackSegInputs"))
    val = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=scale, keep_ratio=True),
           dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
    return train, val


def batch_augments(augment) -> list[dict]:
    """The batch mixes of an `augment` list, as configs for segkit's data preprocessor."""
    out = []
    for name, prob, options in (_spec(item) for item in augment):
        if name in BATCH_MIXES:
            allowed = {"alpha"} if name == "cutmix" else set()
            unknown = sorted(set(options) - allowed)
            if unknown:
                raise ParameterError(f"augment {name}: unknown options {unknown}; allowed: "
                                     f"{', '.join(['prob', *sorted(allowed)])}")
            out.append(dict(type=BATCH_MIXES[name], prob=0.5 if prob is None else prob,
                            **options))
    return out
