"""The embedded sample: a synthetic trash dataset in the competition's exact layout.

Nothing here is a real photo. Each of the 10 trash classes has its own shape, colour and
texture, drawn over cluttered floor-like backgrounds, so that a small model learns them in a
few minutes on a CPU; Battery and Clothing are rare, as in the real data. Layout:

    root/batch_01_vt/0000.jpg ... root/batch_03/....jpg   (train and test images mixed)
    root/train_all.json  train.json  val.json  test.json  (polygons; test has no annotations)

Example:
    from segkit.data.sample import make_sample
    root = make_sample("outputs/sample", n_train=40, n_test=10, size=256)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from segkit.coco.files import write_coco
from segkit.core.classes import TRASH
from segkit.core.errors import ParameterError
from segkit.core.paths import atomic_path, outputs_dir

BATCHES = ("batch_01_vt", "batch_02_vt", "batch_03")
# How often each class (1..10) is drawn: Battery and Clothing rare, as in the real data.
CLASS_WEIGHTS = np.array([14, 16, 8, 9, 7, 15, 6, 12, 1.2, 2.0])
CLASS_WEIGHTS = CLASS_WEIGHTS / CLASS_WEIGHTS.sum()


def _smooth_blob(rng, n: int, irregularity: float) -> np.ndarray:
    """A closed random polygon around the origin with radius ~1."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = 1 + irregularity * rng.uniform(-1, 1, n)
    radii = np.convolve(np.r_[radii[-2:], radii, radii[:2]], np.ones(5) / 5, "valid")
    return np.c_[np.cos(angles) * radii, np.sin(angles) * radii]


def _shape(cls: int, rng) -> tuple[np.ndarray, float]:
    """Unit-scale outline of an object of class `cls` and its typical size (fraction of image)."""
    if cls == 1:  # General trash: a jagged crumpled lump
        angles = np.linspace(0, 2 * np.pi, 14, endpoint=False)
        radii = np.where(np.arange(14) % 2, 0.55, 1.0) * rng.uniform(0.8, 1.2, 14)
        return np.c_[np.cos(angles) * radii, np.sin(angles) * radii], 0.16
    if cls in (2, 3, 7):  # Paper sheet, Paper pack box, Styrofoam block: quadrilaterals
        aspect = {2: 0.75, 3: 0.55, 7: 0.8}[cls]
        quad = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]], float)
        quad += rng.uniform(-0.08, 0.08, quad.shape)
        return quad, {2: 0.2, 3: 0.15, 7: 0.16}[cls]
    if cls == 4:  # Metal: a can seen from the side (ellipse)
        pts = cv2.ellipse2Poly((0, 0), (100, 60), 0, 0, 360, 15).astype(float) / 100
        return pts, 0.11
    if cls in (5, 6):  # Glass and Plastic bottles: body and neck
        neck = 0.16 if cls == 5 else 0.22
        pts = np.array([[-1, -0.32], [0.35, -0.32], [0.6, -neck], [1, -neck], [1, neck],
                        [0.6, neck], [0.35, 0.32], [-1, 0.32]], float)
        return pts, 0.16
    if cls == 8:  # Plastic bag: a large soft blob
        return _smooth_blob(rng, 18, 0.35), 0.24
    if cls == 9:  # Battery: a small cylinder with a terminal cap
        pts = np.array([[-1, -0.38], [0.85, -0.38], [0.85, -0.15], [1, -0.15], [1, 0.15],
                        [0.85, 0.15], [0.85, 0.38], [-1, 0.38]], float)
        return pts, 0.07
    if cls == 10:  # Clothing: a large T-shirt-like outline
        pts = np.array([[-0.5, -1], [0.5, -1], [1, -0.6], [0.75, -0.35], [0.5, -0.5],
                        [0.5, 1], [-0.5, 1], [-0.5, -0.5], [-0.75, -0.35], [-1, -0.6]], float)
        return pts + rng.uniform(-0.05, 0.05, pts.shape), 0.25
    raise ValueError(cls)


def _texture(cls: int, h: int, w: int, rng) -> tuple[np.ndarray, float]:
    """An (h, w, 3) float RGB texture for a class and its opacity over what lies under it."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = rng.normal(0, 1, (h, w, 1)).astype(np.float32)
    jitter = rng.uniform(-18, 18, 3)
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    if cls == 1:
        base, tex, alpha = (95, 80, 70), 22 * noise, 1.0
    elif cls == 2:
        base, alpha = (235, 232, 222), 1.0
        tex = np.where((np.sin(along / 3.0) > 0.75)[..., None], -90.0, 0.0) + 4 * noise
    elif cls == 3:
        base, alpha = (190, 130, 70), 1.0
        tex = 18 * np.sin(along / 5.0)[..., None] + 6 * noise
    elif cls == 4:
        base, alpha = (165, 170, 178), 1.0
        tex = 70 * np.cos(along / 18.0)[..., None] + 5 * noise
    elif cls == 5:
        base, tex, alpha = (40, 140, 70), 8 * noise, 0.8
    elif cls == 6:
        base, alpha = (120, 185, 235), 0.75
        tex = 35 * (np.sin(along / 4.0) > 0.3)[..., None] + 5 * noise
    elif cls == 7:
        base, alpha = (248, 248, 244), 1.0
        tex = -45 * (rng.random((h, w, 1)) > 0.93) + 3 * noise
    elif cls == 8:
        base, alpha = (225, 220, 150), 0.7
        tex = 30 * np.sin(along / 9.0 + 3 * np.sin(yy / 23.0))[..., None] + 6 * noise
    elif cls == 9:
        base, alpha = (30, 30, 30), 1.0
        band = (np.sin(along / 7.0) > 0.4)[..., None]
        tex = np.where(band, np.array([200, 110, -10], np.float32), 0) + 4 * noise
    else:
        base, alpha = (170, 30, 50), 1.0
        stripe = (np.sin(along / 6.0) > 0)[..., None]
        tex = np.where(stripe, np.array([-140, 0, 90], np.float32), 0) + 6 * noise
    return np.asarray(base, np.float32) + jitter + tex, alpha


def _background(h: int, w: int, rng) -> np.ndarray:
    """A cluttered floor: tinted noise, soft gradient, random dark strokes and muted patches."""
    base = rng.uniform(60, 140) + rng.uniform(-25, 25, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    img += (xx / w - 0.5)[..., None] * rng.uniform(-40, 40)
    img += rng.normal(0, 14, (h, w, 1))
    small = rng.normal(0, 20, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
    img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(4, 10)):
        p1 = tuple(int(v) for v in rng.integers(0, [w, h]))
        p2 = tuple(int(v) for v in rng.integers(0, [w, h]))
        colour = tuple(float(v) for v in base * rng.uniform(0.4, 0.8))
        cv2.line(img, p1, p2, colour, int(rng.integers(1, 4)))
    for _ in range(rng.integers(2, 5)):  # muted clutter that is not an object class
        centre = tuple(int(v) for v in rng.integers(0, [w, h]))
        axes = tuple(int(v) for v in rng.integers(4, max(6, w // 12), 2))
        colour = tuple(float(v) for v in base + rng.uniform(-30, 30, 3))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    return img


def _place(outline: np.ndarray, typical: float, size: int, rng) -> np.ndarray:
    """Scale, rotate, flip and move a unit outline to a random spot fully inside the image."""
    scale = typical * size * rng.uniform(0.7, 1.35)
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = outline @ rot.T * scale
    if rng.random() < 0.5:
        pts[:, 0] *= -1
    lo, hi = pts.min(0), pts.max(0)
    margin = 2
    room = size - 2 * margin - (hi - lo)
    shift = margin - lo + rng.uniform(0, 1, 2) * np.maximum(room, 0)
    return np.clip(pts + shift, 0, size - 1)


def _draw_image(index: int, size: int, seed: int, annotate: bool):
    rng = np.random.default_rng([seed, index])
    img = _background(size, size, rng)
    n_objects = int(rng.integers(2, 7))
    classes = rng.choice(np.arange(1, 11), n_objects, p=CLASS_WEIGHTS)
    objects = []
    for cls in classes:
        outline, typical = _shape(int(cls), rng)
        pts = np.round(_place(outline, typical, size, rng), 1)
        objects.append((int(cls), pts, abs(cv2.contourArea(pts.astype(np.float32)))))
    # Drawn largest first, like the label-map rule, so picture and labels agree.
    objects.sort(key=lambda o: -o[2])
    for cls, pts, _ in objects:
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
        tex, alpha = _texture(cls, size, size, rng)
        m = mask.astype(bool)
        img[m] = alpha * tex[m] + (1 - alpha) * img[m]
    img = np.clip(img, 0, 255).astype(np.uint8)
    anns = [(cls, pts) for cls, pts, _ in objects] if annotate else []
    return img, anns


def make_sample(root: str | os.PathLike, n_train: int = 80, n_test: int = 20, size: int = 512,
                seed: int = 0, val_fraction: float = 0.2) -> Path:
    """Write the synthetic dataset to `root` (idempotent: same arguments, same bytes).

    Returns `root`. The organisers' style `train.json` / `val.json` split is included beside
    `train_all.json`; `test.json` lists the test images without annotations.
    """
    if n_train < 2 or n_test < 1 or size < 32:
        raise ParameterError("make_sample needs n_train >= 2, n_test >= 1 and size >= 32")
    root = Path(root)
    total = n_train + n_test
    order = np.random.default_rng(seed).permutation(total)  # test images mixed among train
    is_test = np.zeros(total, bool)
    is_test[order[:n_test]] = True
    categories = [{"id": i, "name": name, "supercategory": name}
                  for i, name in enumerate(TRASH.names) if i > 0]
    train_images, test_images, annotations = [], [], []
    ann_id = 0
    for index in range(total):
        batch = BATCHES[index * len(BATCHES) // total]
        file_name = f"{batch}/{index:04d}.jpg"
        img, anns = _draw_image(index, size, seed, annotate=not is_test[index])
        path = root / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 92])
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.tobytes())
        entry = {"license": 0, "url": None, "file_name": file_name, "height": size,
                 "width": size, "date_captured": None, "id": index}
        (test_images if is_test[index] else train_images).append(entry)
        for cls, pts in anns:
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            annotations.append({
                "id": ann_id, "image_id": index, "category_id": cls,
                "segmentation": [[float(v) for v in pts.ravel()]],
                "area": float(abs(cv2.contourArea(pts.astype(np.float32)))),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "iscrowd": 0})
            ann_id += 1
    info = {"info": {"description": "segkit synthetic sample (not real photos)", "year": 2026},
            "licenses": [{"id": 0, "name": "CC0", "url": None}]}

    def coco(images, anns):
        ids = {img["id"] for img in images}
        return {**info, "images": images,
                "annotations": [a for a in anns if a["image_id"] in ids],
                "categories": categories}

    n_val = max(1, int(round(len(train_images) * val_fraction)))
    val_ids = set(np.random.default_rng(seed + 1).choice(
        [img["id"] for img in train_images], n_val, replace=False).tolist())
    write_coco(coco(train_images, annotations), root / "train_all.json")
    write_coco(coco([i for i in train_images if i["id"] not in val_ids], annotations),
               root / "train.json")
    write_coco(coco([i for i in train_images if i["id"] in val_ids], annotations),
               root / "val.json")
    write_coco(coco(test_images, []), root / "test.json")
    (root / "README.txt").write_text(
        "Synthetic sample made by segkit.data.sample.make_sample: not real photos.\n"
        + json.dumps({"n_train": n_train, "n_test": n_test, "size": size, "seed": seed}) + "\n")
    return root


def default_sample_root() -> Path:
    """The embedded sample under `outputs/sample`, generated on first use (512x512, like the
    competition photos)."""
    root = outputs_dir() / "sample"
    if not (root / "test.json").exists():
        make_sample(root)
    return root


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """A notebook's `data_root` parameter: empty means the embedded synthetic sample."""
    if not data_root:
        return default_sample_root()
    from segkit.core.paths import resolve_output_path

    root = resolve_output_path(data_root)  # the same folder from notebooks/ as from the root
    if not root.is_dir():
        raise ParameterError(f"data_root {str(root)!r} is not a folder")
    return root
