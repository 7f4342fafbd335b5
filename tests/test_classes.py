import numpy as np
import pytest

from segkit.core.classes import TRASH, ClassTable
from segkit.core.errors import CocoError, ParameterError


def test_trash_table_matches_reference():
    assert len(TRASH) == 11
    assert TRASH.names[0] == "Background" and TRASH.names[10] == "Clothing"
    assert TRASH.palette[1] == (192, 0, 128) and TRASH.palette[9] == (64, 64, 128)


def test_categories_map_by_name_not_id():
    cats = [{"id": 5, "name": "Battery"}, {"id": 1, "name": "Paper"}]
    assert TRASH.category_to_index(cats) == {5: 9, 1: 2}


def test_unknown_category_name_names_the_file():
    with pytest.raises(CocoError, match=r"x\.json.*category id 3.*'Bottle'"):
        TRASH.category_to_index([{"id": 3, "name": "Bottle"}], "x.json")


def test_unknown_class_parameter_lists_allowed():
    with pytest.raises(ParameterError, match="Clothing"):
        TRASH.index("Shoes")


def test_table_from_other_categories():
    table = ClassTable.for_coco([{"id": 2, "name": "Road"}, {"id": 1, "name": "Sky"}])
    assert table.names == ("Background", "Sky", "Road")
    assert len(set(table.palette)) == 3
    assert ClassTable.for_coco([{"id": 1, "name": "Paper"}]) is TRASH


def test_colorize_uses_palette():
    rgb = TRASH.colorize(np.array([[0, 4], [255, 10]], np.uint8))
    assert rgb[0, 1].tolist() == [128, 0, 0]
    assert rgb[1, 0].tolist() == [255, 255, 255]
