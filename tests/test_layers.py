"""The tree is the architecture: layers import only downwards, and one module judges.

Read from the source with ast (every import, lazy ones inside functions included),
so a new upward import or a second judge fails here, not in review.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "dfforensics"
# Each layer may import itself and the layers below it.
LAYERS = ["core", "logs", "inputs", "dump", "batch"]
TOP = ("cli", "livecli", "api", "drgn_commands", "__init__")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        modules[".".join(parts)] = path
    return modules


def _imports(path: Path) -> set[str]:
    """The dfforensics modules a file imports, relative to the package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dfforensics"):
            base = node.module.removeprefix("dfforensics").lstrip(".")
            if base:
                found.add(base)
            else:  # from dfforensics import x: x is a module or a package
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name.removeprefix("dfforensics.") for alias in node.names
                         if alias.name.startswith("dfforensics."))
    return found


def _layer(module: str) -> int:
    head = module.split(".")[0]
    return LAYERS.index(head) if head in LAYERS else len(LAYERS)


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) < len(LAYERS)))
def test_no_import_runs_up_a_layer(module):
    upward = {imported for imported in _imports(MODULES[module]) if _layer(imported) > _layer(module)}
    assert not upward, f"{module} imports {upward} from a layer above it"


def test_every_module_is_in_a_layer_or_on_top():
    stray = [m for m in MODULES if _layer(m) == len(LAYERS) and m not in TOP]
    assert not stray, f"modules outside the layers: {stray}"


def test_no_import_cycle():
    graph = {module: {i for i in _imports(path) if i in MODULES} for module, path in MODULES.items()}
    state: dict[str, str] = {}

    def visit(module, trail):
        state[module] = "open"
        for target in graph[module]:
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(trail + [module, target]))
            if target not in state:
                visit(target, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_evidence_is_made_only_by_the_judge():
    makers = sorted(module for module, path in MODULES.items() if "Evidence(" in path.read_text()
                    and module not in ("core.verdict", "core.model"))
    assert makers == [], f"evidence made outside dfforensics/core/verdict.py: {makers}"
