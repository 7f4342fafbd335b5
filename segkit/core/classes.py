"""The class table: names, palette and the mapping from COCO categories to class indices.

Index 0 is always Background (every unannotated pixel). Categories map to indices by
*name*, never by id alone, so files whose ids differ still line up.

Example:
    >>> from segkit.core.classes import TRASH
    >>> TRASH.names[9], TRASH.palette[9]
    ('Battery', (64, 64, 128))
    >>> TRASH.category_to_index([{"id": 7, "name": "Metal"}])
    {7: 4}
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from segkit.core.errors import CocoError, ParameterError

BACKGROUND = "Background"
IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassTable:
    """Class names in index order (Background first) and an RGB colour for each."""

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]

    def __post_init__(self):
        if not self.names or self.names[0] != BACKGROUND:
            raise ParameterError(f"a class table starts with {BACKGROUND!r}, got {self.names[:1]}")
        if len(set(self.names)) != len(self.names):
            raise ParameterError(f"class names must be unique: {self.names}")
        if len(self.palette) != len(self.names):
            raise ParameterError("one palette colour per class is needed")
        if len(self.names) > 255:
            raise ParameterError("at most 255 classes fit a uint8 label map (255 is ignore)")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def index(self, name: str, parameter: str = "classes") -> int:
        """Index of a class by name; unknown names raise a ParameterError listing the allowed."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ParameterError(
                f"unknown class {name!r} in {parameter}; allowed: {', '.join(self.names)}"
            ) from None

    def category_to_index(self, categories: list[dict], source: str = "") -> dict[int, int]:
        """Map COCO category ids to class indices by category name."""
        mapping = {}
        for cat in categories:
            if cat["name"] not in self.names:
                where = f"{source}: " if source else ""
                raise CocoError(
                    f"{where}category id {cat['id']} has unknown name {cat['name']!r}; "
                    f"the class table has: {', '.join(self.names)}"
                )
            mapping[int(cat["id"])] = self.names.index(cat["name"])
        return mapping

    def palette_array(self) -> np.ndarray:
        """(256, 3) uint8 lookup table: class index -> RGB, ignore (255) shown white."""
        lut = np.zeros((256, 3), np.uint8)
        lut[: len(self.palette)] = self.palette
        lut[IGNORE_INDEX] = (255, 255, 255)
        return lut

    def colorize(self, label_map: np.ndarray) -> np.ndarray:
        """An (H, W, 3) RGB picture of a label map."""
        return self.palette_array()[label_map]

    @classmethod
    def from_categories(cls, categories: list[dict]) -> ClassTable:
        """Background plus the categories in id order, keeping the trash palette for known names."""
        known = dict(zip(TRASH.names, TRASH.palette))
        names = [BACKGROUND] + [c["name"] for c in sorted(categories, key=lambda c: c["id"])
                                if c["name"] != BACKGROUND]
        generated = distinct_colors(len(names))
        palette = [known.get(n, generated[i]) for i, n in enumerate(names)]
        palette[0] = (0, 0, 0)
        return cls(tuple(names), tuple(palette))

    @classmethod
    def for_coco(cls, categories: list[dict]) -> ClassTable:
        """The trash table when every category is a trash class, else one built from the file."""
        if all(c["name"] in TRASH.names for c in categories):
            return TRASH
        return cls.from_categories(categories)


def distinct_colors(n: int) -> list[tuple[int, int, int]]:
    """n well-separated RGB colours (golden-angle hues), deterministic."""
    colors = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        sat, val = (0.65, 0.95) if i % 2 else (0.9, 0.75)
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


TRASH = ClassTable(
    names=(
        "Background", "General trash", "Paper", "Paper pack", "Metal", "Glass",
        "Plastic", "Styrofoam", "Plastic bag", "Battery", "Clothing",
    ),
    palette=(
        (0, 0, 0), (192, 0, 128), (0, 128, 192), (0, 128, 64), (128, 0, 0), (64, 0, 128),
        (64, 0, 192), (192, 128, 64), (192, 192, 128), (64, 64, 128), (128, 0, 192),
    ),
)
