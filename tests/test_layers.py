"""The package's folders are its layers: each imports only from the ones below it (lazy imports
inside functions included), and the bottom ones load without torch."""

import ast
import subprocess
import sys

import pytest

from segkit.core.paths import PROJECT_ROOT

# bottom to top; `viz` is a module of its own (pictures from arrays)
LAYERS = ("core", "coco", "data", "folds", "submission", "viz", "results", "recipe", "train",
          "predict", "search", "flow")
WITHOUT_TORCH = ("core", "coco", "data", "folds", "submission", "viz", "results", "recipe")
PACKAGE = PROJECT_ROOT / "segkit"


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "segkit" else None


def imports(path) -> list[tuple[int, str]]:
    """(line, module) of every segkit import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    here = ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: -node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [f"{module}.{a.name}" for a in node.names] if module == "segkit" else [module]
            found += [(node.lineno, m) for m in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in found if m.startswith("segkit.")]


def test_every_folder_is_a_known_layer():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__", "components"}
    assert folders | modules == set(LAYERS)


def test_no_import_reaches_a_higher_layer():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = layer_of(".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts))
        if source not in rank:
            continue  # segkit/__init__, __main__ and the components shim sit above every layer
        for line, module in imports(path):
            target = layer_of(module)
            if target in rank and rank[target] > rank[source]:
                upward.append(f"{path.relative_to(PROJECT_ROOT)}:{line} {source} -> {module}")
    assert upward == []


@pytest.mark.parametrize("layer", WITHOUT_TORCH)
def test_the_lower_layers_load_without_torch(layer):
    code = (f"import sys, segkit.{layer}; "
            "print(sorted(m for m in ('torch', 'mmseg', 'mmengine', 'mmcv') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_a_run_config_of_the_flat_layout_still_loads(tmp_path):
    """Run folders saved before the layer folders name `segkit.components` in custom_imports."""
    config = tmp_path / "config.py"
    config.write_text("custom_imports = dict(imports=['segkit.components'], "
                      "allow_failed_imports=False)\n"
                      "model = dict(type='EncoderDecoder')\n")
    code = ("from mmengine.config import Config; from mmseg.registry import DATASETS; "
            f"Config.fromfile({str(config)!r}); "
            "print('CocoSegDataset' in DATASETS.module_dict)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True"
