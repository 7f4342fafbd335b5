"""Experiment tracking exercised end to end: one tiny training with W&B (offline) and
TensorBoard, then both read back: the scalars and the validation pictures (each image with its
labels beside its prediction) are where a person would look for them."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny_train_params


def wandb_records(path: Path):
    """The records of an offline W&B run file (`run-<id>.wandb`): a 7-byte header (":W&B",
    magic, version), then LevelDB-log blocks of 32 KiB whose chunks (crc, length, type:
    1 full, 2 first, 3 middle, 4 last) carry protobuf `Record`s. wandb's own reader left the
    Python package when its service moved to Go; `wandb sync` reads the same format."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0:
            continue
        pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _history(path: Path) -> list[dict]:
    rows = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


@pytest.fixture(scope="module")
def tracked_run(sample_root, tmp_path_factory):
    """A four-iteration run validated twice, 2 pictures drawn each time, logged to W&B
    offline (no key, no network: WANDB_MODE=offline, every W&B folder in tmp)."""
    wandb = pytest.importorskip("wandb", reason="wandb is not installed (the dev and wandb "
                                                "extras install it)")
    del wandb
    from segkit.train.training import run

    tmp = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as env:
        for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY"):
            env.delenv(key, raising=False)
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        env.setenv("NETRC", str(tmp / "no_netrc"))
        for key in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            folder = tmp / key.lower()
            folder.mkdir()
            env.setenv(key, str(folder))
        return run(**tiny_train_params(sample_root, iters=4, val_interval=2, log_interval=2,
                                       warmup_iters=2, weights="none", vis_images=2,
                                       wandb=True, wandb_project="segkit-test",
                                       work_dir=str(tmp / "run")))


def test_wandb_offline_run_holds_the_scalars_and_the_validation_pictures(tracked_run):
    offline = list(tracked_run.work_dir.glob("*/vis_data/wandb/offline-run-*"))
    assert len(offline) == 1, "no offline W&B run in the run folder"
    history = _history(next(offline[0].glob("run-*.wandb")))
    losses = [row["loss"] for row in history if "loss" in row]
    mious = [row["mIoU"] for row in history if "mIoU" in row]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert len(mious) == 2 and mious[-1] == pytest.approx(tracked_run.scalars["mIoU"].dropna()
                                                          .iloc[-1], abs=1e-4)
    assert any(key.startswith("IoU.") for row in history for key in row)
    pictures = {key.split("/")[0]: row[key] for row in history for key in row
                if key.startswith("val_") and key.endswith("/path")}
    assert len(pictures) == 2, pictures  # the same 2 validation images at each validation
    media = sorted((offline[0] / "files").glob("media/images/val_*.png"))
    assert len(media) == 4  # 2 pictures x 2 validations
    from PIL import Image

    width, height = Image.open(media[0]).size
    assert width == 2 * height  # the image with its labels | with its prediction


def _follows(drawn: np.ndarray, photo: np.ndarray) -> float:
    """The share of pixels where `drawn` is `photo` times one factor (an overlay's blend with
    the black background colour), within 8 grey levels."""
    bright = photo > 30
    factor = np.median(drawn[bright] / photo[bright])
    return float((np.abs(drawn - factor * photo) < 8).mean())


def test_tensorboard_shows_the_validation_overlays(tracked_run, sample_root):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(tracked_run.work_dir.glob(
        "*/vis_data/events.out.tfevents.*"))), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"loss", "mIoU"} <= set(events.Tags()["scalars"])
    tags = events.Tags()["images"]
    assert len(tags) == 2 and all(t.startswith("val_") for t in tags)
    for tag in tags:
        shots = events.Images(tag)
        assert [s.step for s in shots] == [2, 4]
        picture = np.asarray(Image.open(io.BytesIO(shots[-1].encoded_image_string))
                             .convert("L")).astype(float)
        height, width = picture.shape
        assert width == 2 * height
        val = json.loads((sample_root / "val.json").read_text())["images"]
        photos = {Path(i["file_name"]).name: np.asarray(
            Image.open(sample_root / i["file_name"]).convert("L").resize((height, height)))
            .astype(float) for i in val}
        photo = photos[tag.removeprefix("val_")]
        other = next(p for name, p in photos.items() if name != tag.removeprefix("val_"))
        # each half is this photo under label colours (truth | prediction): not the photo
        # itself, but where the label is background it is the photo darkened by one factor
        left, right = picture[:, :height], picture[:, height:]
        assert np.abs(left - photo).mean() > 1
        assert _follows(left, photo) > 0.75 and _follows(right, photo) > 0.75
        assert _follows(left, photo) > _follows(left, other) + 0.1
