"""A folder of images without annotations as a COCO-style image list, so that prediction reads it
like any test file: `segkit predict RUN --images DIR` and 05_predict's `images_dir`.

The list (ids 1..N in the order of the files' relative paths, `file_name` relative to the folder,
the size as cv2 decodes the file, EXIF rotation included) is written outside the folder, under
outputs/image_lists/, named by its content; the user's folder is only read.

Example:
    path = image_folder_coco("photos/", categories, outputs_dir() / "image_lists")
    coco = load_coco(path)             # data root: photos/
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from segkit.core.errors import ParameterError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def folder_images(images_dir: str | os.PathLike) -> list[Path]:
    """The JPEG and PNG files under a folder (subfolders too; hidden files and folders left
    out), sorted by their path relative to it; a ParameterError when there are none."""
    root = Path(images_dir)
    if not root.is_dir():
        raise ParameterError(f"images folder {str(root)!r} is not a folder")
    found = sorted((p for p in root.rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)),
                   key=lambda p: p.relative_to(root).as_posix())
    if not found:
        raise ParameterError(f"images folder {root}: no {', '.join(IMAGE_SUFFIXES)} files in it")
    return found


def folder_image_entries(images_dir: str | os.PathLike) -> list[dict]:
    """COCO image entries (id, file_name, width, height) of `folder_images`; an unreadable
    file is a CocoError naming it."""
    from segkit.coco.files import _image_size
    from segkit.core.errors import CocoError

    root = Path(images_dir)
    entries = []
    for number, path in enumerate(folder_images(root), start=1):
        try:
            width, height = _image_size(path)
        except (OSError, SyntaxError, ValueError) as exc:
            raise CocoError(f"{path}: not a readable image ({exc})") from None
        entries.append({"id": number, "file_name": path.relative_to(root).as_posix(),
                        "width": width, "height": height})
    return entries


def image_folder_coco(images_dir: str | os.PathLike, categories: list[dict],
                      out_dir: str | os.PathLike) -> Path:
    """Write the COCO-style list of a folder's images (no annotations, the given categories)
    into `out_dir` (never the images folder), named by its content; returns its path."""
    from segkit.coco.files import write_coco

    root = Path(images_dir).resolve()
    data = {"info": {"description": f"images of {root} (segkit, no annotations)"},
            "images": folder_image_entries(root), "annotations": [],
            "categories": [dict(c) for c in categories], "segkit": {"image_root": str(root)}}
    digest = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    out = Path(out_dir).resolve()
    if out == root or root in out.parents:
        raise ParameterError(f"the image list would be written into the images folder {root}; "
                             "choose another place for it")
    return write_coco(data, out / f"{root.name}_{digest}.json")
