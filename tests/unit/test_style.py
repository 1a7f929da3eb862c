"""The code's habits, checked: ruff's lint and format, and an import graph with no upward arrows."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "asteroid"
# each command's module: its arguments and `main`, on top of everything else
COMMANDS = {
    "asteroid.cli",
    "asteroid.simulate",
    "asteroid.rollout",
    "asteroid.compare",
    "asteroid.benchmark",
    "asteroid.analysis.command",
    "asteroid.data.inspect",
}
LOWER_LAYERS = ("models", "data", "analysis")


def imported_modules(path: Path) -> set[str]:
    """Every asteroid module `path` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] == "asteroid"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("layer", LOWER_LAYERS)
def test_lower_layers_never_import_a_command(layer):
    upward = {
        module_name(path): sorted(imported_modules(path) & (COMMANDS | {"asteroid.lightning_cli"}))
        for path in (PACKAGE / layer).rglob("*.py")
        if module_name(path) not in COMMANDS
    }
    assert {name: found for name, found in upward.items() if found} == {}


def test_no_command_imports_the_dispatcher():
    # cli.py imports the commands (by name, through importlib); one importing it back would close a loop
    for command in COMMANDS - {"asteroid.cli"}:
        path = PACKAGE.parent / (command.replace(".", "/") + ".py")
        assert "asteroid.cli" not in imported_modules(path), command


@pytest.mark.skipif(
    importlib.util.find_spec("ruff") is None, reason="ruff is in the dev extra: pip install -e '.[dev]'"
)
@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(check):
    run = subprocess.run([sys.executable, "-m", "ruff", *check, "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
