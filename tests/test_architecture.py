"""The shape of the house (ARCHITECTURE.md), checked: no module reaches into another's private names, and no
hand-written module grows past about 500 lines. The import layering itself is import-linter's (`make lint`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "kernels", "retrieval", "llm", "rag", "service")
MAX_LINES = 520  # "about 500": a module past this holds more than one concept
# Private attributes that are a public convention of the library that defines them.
LIBRARY_CONVENTIONS = {"_replace", "_asdict", "_fields", "_make", "_C", "_dynamo", "_inductor", "_utils"}


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(path: Path) -> list[str]:
    """`from x import _name` and `obj._name` on anything but self / cls / a local module alias of the stdlib."""
    tree = ast.parse(path.read_text(), str(path))
    own_package = path.relative_to(ROOT).parts[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            # a package's private modules (kernels.triton._tuning) are its own to share; private names never are
            crossing = node.module.split(".")[0] != own_package
            module_private = crossing and any(map(_private, node.module.split(".")))
            for alias in node.names:
                is_module = (ROOT.joinpath(*node.module.split("."), alias.name + ".py")).exists()
                if module_private or (_private(alias.name) and not (is_module and not crossing)):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{alias.name}")
        elif isinstance(node, ast.Attribute):
            name = node.attr
            if not _private(name) or name in LIBRARY_CONVENTIONS:
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} uses .{name} of {ast.unparse(owner)}")
    return found


def test_modules_only_use_their_own_private_names():
    found = [use for p in modules() for use in private_uses(p)]
    assert not found, "private names used from outside their owner:\n" + "\n".join(found)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_holds_one_concept(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines: split it by concept (ARCHITECTURE.md)"


def test_the_checker_sees_private_uses(tmp_path):
    p = ROOT / "common" / "_architecture_probe.py"  # inside a package, as the real modules are
    try:
        p.write_text(
            "from retrieval.store import _x\nfrom common._y import z\nfrom retrieval._y import z\nfrom common import checks\nchecks._y\nself._ok\n"
        )
        uses = private_uses(p)
    finally:
        p.unlink()
    # common may use its own private module; the other three reach into another owner's private names
    assert len(uses) == 3 and "retrieval.store._x" in uses[0] and "retrieval._y" in uses[1], uses
    assert "._y of checks" in uses[2], uses
