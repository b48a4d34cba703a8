"""The package's layers run one way (``docs/layout.md``): no module imports one of a higher layer, lazily or not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "rsna_aneurysm"

# Lowest first. A top-level module or sub-package not listed here fails the test: place it.
LAYERS: list[set[str]] = [
    {"__init__", "constants", "volume", "config", "layout", "runtime", "io", "cli_common"},
    {"preprocess"},
    {"data"},
    {"models"},
    {"evaluate"},
    {"train"},
    {"region"},
    {"vessels"},
    {"roi"},
    {"infer"},
    {"kaggle"},
    {"viewer"},
    {"cli"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(parts: tuple[str, ...]) -> str:
    """The layer unit of a module path inside the package: its sub-package, or the top-level module's name."""
    return parts[0] if parts else "__init__"


def _imports(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    """(line, package-relative target path) of every import of the kit's own modules in ``path``."""
    return _imports_in(path.read_text(), path.relative_to(SRC).with_suffix("").parts)


def _imports_in(source: str, rel: tuple[str, ...]) -> list[tuple[int, tuple[str, ...]]]:
    package = rel[:-1]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = (*base, *(node.module.split(".") if node.module else ()))
                if not node.module:  # `from . import x` / `from .. import x`: each name is a module or attribute
                    for alias in node.names:
                        out.append((node.lineno, (*target, alias.name)))
                    continue
                out.append((node.lineno, target))
            elif node.module and node.module.split(".")[0] == "rsna_aneurysm":
                out.append((node.lineno, tuple(node.module.split(".")[1:])))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "rsna_aneurysm":
                    out.append((node.lineno, tuple(alias.name.split(".")[1:])))
    return out


def test_every_module_has_a_layer() -> None:
    units = {_unit(p.relative_to(SRC).with_suffix("").parts) for p in SRC.rglob("*.py")}
    assert not units - set(LAYER_OF), f"place these in LAYERS: {sorted(units - set(LAYER_OF))}"


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    own = _unit(path.relative_to(SRC).with_suffix("").parts)
    bad = []
    for line, target in _imports(path):
        unit = _unit(target)
        if unit in LAYER_OF and LAYER_OF[unit] > LAYER_OF[own]:
            bad.append(f"line {line}: {own} imports {'.'.join(target)} (layer {unit})")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation() -> None:
    # The import walker must report relative, absolute and lazy imports alike, or the test above proves nothing.
    src = ("from ..infer.pipeline import X\nimport rsna_aneurysm.viewer.app\n\n"
           "def f():\n    from ..kaggle import package\n")
    found = {t for _, t in _imports_in(src, ("data", "fake"))}
    assert {("infer", "pipeline"), ("viewer", "app"), ("kaggle",)} <= found
