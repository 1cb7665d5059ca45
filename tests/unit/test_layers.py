"""Lower layers never import higher ones (docs/DESIGN.md, "Layers and folders")."""
import ast
from pathlib import Path

import medlake

LEVELS = {
    "config": 0, "__init__": 0,
    "cdm": 1,
    "engines": 2,
    "sources": 3,
    "landing": 4, "transform": 4, "identity": 4, "mapping": 4,
    "quality": 5, "cohort": 5, "nlp": 5,
    "privacy": 6, "governance": 6,
    "exchange": 7, "federation": 7,
    "simulate": 8,  # the test bed: nothing in the product imports it
    "api": 9, "web": 9, "cli": 9,
}
ROOT = Path(medlake.__file__).parent


def top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def test_every_package_has_a_layer():
    for p in ROOT.iterdir():
        if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py"):
            assert p.stem in LEVELS, f"{p.name} is not placed in a layer: add it to DESIGN.md and this test"


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for path in ROOT.rglob("*.py"):
        here = path.relative_to(ROOT).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.startswith("medlake.") and LEVELS[top(name)] > LEVELS[here]:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)
