"""The layering of docs/architecture.md, checked on the source so that it stays true.

    contract   imports nothing of bitlane
    golden     imports contract at most
    hw         imports contract
    sw         imports contract and golden, never hw
    bitlane/   (CLI, backends, devices, demo) may import everything: it sits above both
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# folder -> its installed package, and the layers each may import
LAYERS = {
    "contract": ("bitlane.contract", {"bitlane.contract"}),
    "golden": ("bitlane.golden", {"bitlane.contract", "bitlane.golden"}),
    "hw": ("bitlane.hw", {"bitlane.contract", "bitlane.hw"}),
    "sw": ("bitlane.sw", {"bitlane.contract", "bitlane.golden", "bitlane.sw"}),
}
OLD_NAMES = {"hw", "sw", "golden", "contract"}


def module_name(path: Path, package: str) -> str:
    """Installed dotted name of the source file `path` in folder `package` ("__init__" kept)."""
    return ".".join([package, *path.relative_to(ROOT).parts[1:-1], path.stem])


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `source`, the text of `module`, relative ones resolved."""
    tree = ast.parse(source)
    # level 1 of a relative import drops the module's last part (for a package's __init__, that
    # part stands for the __init__, so level 1 is the package itself)
    parts = module.split(".")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:-node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from bitlane import hw` imports bitlane.hw
            if module == "bitlane":
                found += [(node.lineno, f"bitlane.{alias.name}") for alias in node.names]
    return found


def layer_of(module: str) -> str | None:
    for folder, (package, _) in LAYERS.items():
        if module == package or module.startswith(package + "."):
            return package
    if module.startswith("bitlane."):
        return "bitlane"  # the top: CLI, backends, devices, demo
    return None


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_layer_imports_only_what_it_may(folder: str):
    package, allowed = LAYERS[folder]
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no sources under {folder}/"
    bad = []
    for path in files:
        for line, module in imported_modules(path.read_text(), module_name(path, package)):
            top = module.split(".")[0]
            layer = layer_of(module)
            if top in OLD_NAMES:
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {module!r} by its checkout name")
            elif layer is not None and layer not in allowed:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {package} imports {module}")
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_checker_sees_a_violation():
    """The checker itself: absolute, `from bitlane import` and climbing relative imports are all resolved."""
    source = "from bitlane import hw\nfrom ..hw.lane import LaneArray\nfrom .placement import plan_pieces\n"
    modules = [m for _, m in imported_modules(source, "bitlane.sw.probe")]
    assert modules == ["bitlane", "bitlane.hw", "bitlane.hw.lane", "bitlane.sw.placement"]
    assert [layer_of(m) for m in modules[1:]] == ["bitlane.hw", "bitlane.hw", "bitlane.sw"]
    init = [m for _, m in imported_modules("from . import link\n", "bitlane.sw.__init__")]
    assert init == ["bitlane.sw"]


def test_one_namespace_outside_the_checkout(tmp_path: Path):
    """Installed, the project is `bitlane.*`; the checkout's folder names are not importable."""
    code = ("import importlib\n"
            "for name in ('hw', 'sw', 'golden', 'contract'):\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ImportError:\n"
            "        continue\n"
            "    raise SystemExit(f'{name} imports from outside the checkout')\n"
            "import bitlane.contract.protocol, bitlane.hw.core, bitlane.sw, bitlane.golden, bitlane.cli\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
