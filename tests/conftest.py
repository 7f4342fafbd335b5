"""Shared fixtures: tiny data the tests make themselves (never ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segkit.data.sample import make_sample


@pytest.fixture(autouse=True)
def _outputs_in_tmp(tmp_path_factory, monkeypatch):
    """Every test writes its outputs (and label caches) under a temporary folder."""
    monkeypatch.setenv("SEGKIT_OUTPUTS", str(tmp_path_factory.getbasetemp() / "outputs"))


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """A tiny synthetic dataset in the competition layout (read-only: copy before changing)."""
    return make_sample(tmp_path_factory.mktemp("sample"), n_train=24, n_test=6, size=96, seed=0)


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def tiny_coco():
    """A hand-written two-image COCO dict: polygons, an uncompressed RLE and a compressed one."""
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 6},
                   {"id": 2, "file_name": "b.jpg", "width": 8, "height": 6}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1,
             "segmentation": [[0, 0, 8, 0, 8, 6, 0, 6]]},  # whole image: General trash
            {"id": 11, "image_id": 1, "category_id": 9,
             "segmentation": [[2, 2, 5, 2, 5, 5, 2, 5]]},  # small square on top: Battery
            {"id": 12, "image_id": 2, "category_id": 2,
             "segmentation": {"size": [6, 8], "counts": [6, 6, 36]}},  # column 1: Paper
        ],
        "categories": [{"id": 1, "name": "General trash"}, {"id": 2, "name": "Paper"},
                       {"id": 9, "name": "Battery"}],
    }


def run_notebook(notebook: str, tmp_path: Path, **parameters):
    """Execute notebooks/<name>.ipynb with papermill on tiny parameters; returns the executed
    notebook as a dict (cells with outputs) for assertions."""
    import nbformat

    from segkit.flow.notebook import run_notebook as _run

    out = _run(notebook, tmp_path / f"{notebook}.executed.ipynb", parameters)
    return nbformat.read(str(out), as_version=4)


def notebook_text(nb) -> str:
    """All text outputs (stream, plain-text results) of an executed notebook, joined."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


TINY_TRAIN = dict(image_size=96, crop_size=64, batch_size=4, num_workers=0, log_interval=10,
                  warmup_iters=10, lr=0.002)


def tiny_train_params(sample_root: Path, **overrides) -> dict:
    """Parameters of a CPU-sized run on the tiny sample (organisers' train/val split)."""
    return {"data_root": str(sample_root), "fold": None,
            "train_file": str(sample_root / "train.json"),
            "val_file": str(sample_root / "val.json"), **TINY_TRAIN, **overrides}


@pytest.fixture(scope="session")
def trained_run(sample_root, tmp_path_factory):
    """One short real training run shared by the training, prediction and ensemble tests."""
    from segkit.train.training import run

    work_dir = tmp_path_factory.mktemp("runs") / "lite0"
    return run(**tiny_train_params(sample_root, iters=150, val_interval=50,
                                   work_dir=str(work_dir)))
