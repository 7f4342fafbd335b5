"""What the model sees: training samples after the whole training pipeline and the batch mixes,
drawn for 04_train.

Example:
    show_augmented({"augment": ["flip", "rotate:0.5", "cutmix"]}, n=8)
"""

from __future__ import annotations


def augmented_samples(params: dict, n: int = 8, seed: int = 0):
    """(images, labels) of `n` training samples as the model sees them: the training
    pipeline of these training parameters, then the batch mixes. images (n, H, W, 3) RGB
    uint8, labels (n, H, W) uint8 (255: ignored / padding)."""
    import random

    import numpy as np
    import torch
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS, MODELS
    from mmseg.utils import stack_batch

    from segkit.train.training import build_config

    cfg = build_config(**params)
    init_default_scope("mmseg")
    dataset = DATASETS.build(cfg["train_dataloader"]["dataset"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    order = np.random.permutation(len(dataset))
    items = [dataset[int(order[i % len(order)])] for i in range(n)]
    crop = params.get("crop_size") or cfg["model"]["data_preprocessor"].get("size")
    crop = tuple(crop) if isinstance(crop, (list, tuple)) else (crop, crop)
    inputs, samples = stack_batch([i["inputs"].float() for i in items],
                                  [i["data_samples"] for i in items], size=crop,
                                  pad_val=0, seg_pad_val=255)
    inputs = torch.stack(inputs) if isinstance(inputs, list) else inputs
    for aug in cfg["model"]["data_preprocessor"].get("batch_augments") or []:
        inputs, samples = MODELS.build(aug)(inputs, samples)
    images = inputs.flip(1).permute(0, 2, 3, 1).clamp(0, 255).byte().numpy()  # BGR -> RGB
    labels = np.stack([s.gt_sem_seg.data[0].numpy().astype(np.uint8) for s in samples])
    return images, labels


def show_augmented(params: dict, n: int = 8, seed: int = 0, per_row: int = 4):
    """A figure of `n` augmented training samples: each image, and its labels over it."""
    from segkit.coco.files import load_coco
    from segkit.core.classes import ClassTable
    from segkit.recipe.parameters import check_training_parameters
    from segkit.train.training_data import training_files
    from segkit.viz import overlay, show_grid

    p = check_training_parameters(params)
    _, train_file, _ = training_files(p)
    classes = ClassTable.for_coco(load_coco(train_file).categories)
    images, labels = augmented_samples(p, n, seed)
    tiles = [t for img, lab in zip(images, labels) for t in (img, overlay(img, lab, classes))]
    cols = 2 * per_row
    rows = [tiles[i:i + cols] for i in range(0, len(tiles), cols)]
    return show_grid(rows, titles=["image", "labels"] * min(per_row, len(images)),
                     size=2.0)
