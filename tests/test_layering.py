"""Dependencies run one way: tasks -> unitransformer, and models -> layers, never back."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "unitransformer"
# The building blocks: they may import each other, never a model or the engine.
LAYER_MODULES = ["attention.py", "layers.py", "embeddings.py", "stacks.py"]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_scanner_sees_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import tasks.cli\nfrom unitransformer.models import vit\n")
    assert _imports(probe) == {"tasks.cli", "unitransformer.models"}


@pytest.mark.parametrize(
    "path", sorted(LIBRARY.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_library_never_imports_tasks(path):
    bad = {name for name in _imports(path) if name == "tasks" or name.startswith("tasks.")}
    assert not bad, f"{path} imports {bad}: the library must not depend on the tasks"


@pytest.mark.parametrize("name", LAYER_MODULES)
def test_layers_never_import_models_or_engine(name):
    forbidden = ("unitransformer.models", "unitransformer.engine", "unitransformer.interop")
    bad = {n for n in _imports(LIBRARY / name) if n.startswith(forbidden)}
    assert not bad, f"unitransformer/{name} imports {bad}"


def test_relative_imports_are_not_used():
    # Relative imports would slip past the checks above; the code base uses absolute ones.
    for path in LIBRARY.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)), path
