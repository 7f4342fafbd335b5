"""Every numbered notebook: a papermill `parameters` cell papermill can read in full, and no
outputs committed."""

import ast
import json

import papermill
import pytest

from segkit.flow.notebook import NOTEBOOKS_DIR

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def test_all_numbered_notebooks_exist():
    assert [p.stem[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, 10)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_first_code_cell_and_fully_parsed(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    tree = ast.parse("".join(code[0]["source"]))
    assert not [node for node in tree.body if isinstance(node, ast.Assign)], \
        "every parameter carries a type annotation"
    assigned = {node.target.id for node in tree.body if isinstance(node, ast.AnnAssign)}
    # papermill silently skips a parameter line it cannot parse (an "=" in its comment, ...)
    inferred = papermill.inspect_notebook(str(path))
    assert assigned == set(inferred)
    # and `papermill --help-notebook` shows each one's type
    assert [n for n, p in inferred.items() if p["inferred_type_name"] in ("None", "")] == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_04_train_declares_every_training_parameter_with_its_default():
    """The table of training defaults is held once: 04_train's cell is written from it."""
    from segkit.recipe.parameters import parameters_cell

    nb = json.loads((NOTEBOOKS_DIR / "04_train.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert "".join(cell["source"]) == parameters_cell()
