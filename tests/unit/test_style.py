"""The code's habits, checked: ruff's lint and format, and an import graph with no upward arrows."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "asteroid"
# the dispatcher and each command's module (its arguments and `main`), on top of everything else
COMMANDS = {"asteroid.cli"} | {
    f"asteroid.commands.{path.stem}" for path in (PACKAGE / "commands").glob("*.py") if path.stem != "__init__"
}
LOWER_LAYERS = ("models", "data", "analysis", "simulation")


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


def modules():
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def test_nothing_but_the_dispatcher_imports_a_command():
    # cli.py imports the commands by name (importlib); any other arrow into commands/ points up
    upward = {
        name: sorted(imported_modules(path) & COMMANDS) for name, path in modules().items() if name != "asteroid.cli"
    }
    assert {name: found for name, found in upward.items() if found} == {}
    assert len(COMMANDS) == 8  # simulate, inspect, compare, rollout, analyze, benchmark, export and the dispatcher


@pytest.mark.parametrize("layer", LOWER_LAYERS)
def test_lower_layers_never_import_the_lightning_cli(layer):
    upward = [
        name
        for name, path in modules().items()
        if name.startswith(f"asteroid.{layer}") and "asteroid.lightning_cli" in imported_modules(path)
    ]
    assert upward == []


# Each group imports only from groups before it (and from itself); the package root's own modules (errors, fileio,
# runs, config, checkpoints, schedule) sit below all of them, the dispatcher and commands above.
GROUPS = ("simulation", "data", "models", "training", "analysis", "lightning_cli", "api", "studies")


def group_of(name: str) -> str | None:
    part = name.split(".")[1] if name.count(".") else None
    return part if part in GROUPS else None


def test_no_group_imports_one_above_it():
    upward = {}
    for name, path in modules().items():
        own = group_of(name)
        if own is None:
            continue
        allowed = set(GROUPS[: GROUPS.index(own) + 1])
        above = sorted(m for m in imported_modules(path) if group_of(m) not in (None, *allowed))
        if above:
            upward[name] = above
    assert upward == {}


def test_models_import_each_other_without_a_cycle():
    """Not even for type checking: the heads (bonded, noise) sit beside the contract (base), not inside it."""
    graph = {
        name: {m for m in imported_modules(path) if m in modules() and m.startswith("asteroid.models")} - {name}
        for name, path in modules().items()
        if name.startswith("asteroid.models")
    }
    visiting, done = set(), set()

    def cycle_from(node, trail):
        if node in visiting:
            return trail[trail.index(node) :] + [node]
        if node in done:
            return None
        visiting.add(node)
        for nxt in sorted(graph.get(node, ())):
            found = cycle_from(nxt, trail + [node])
            if found:
                return found
        visiting.discard(node)
        done.add(node)
        return None

    cycles = [c for c in (cycle_from(n, []) for n in sorted(graph)) if c]
    assert cycles == []


def test_the_package_root_holds_at_most_ten_modules():
    """The rest is grouped (docs/design.md): the root keeps what every group uses, and the dispatcher."""
    root = sorted(path.stem for path in PACKAGE.glob("*.py"))
    assert len(root) <= 10, root


@pytest.mark.skipif(
    importlib.util.find_spec("ruff") is None, reason="ruff is in the dev extra: pip install -e '.[dev]'"
)
@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(check):
    run = subprocess.run([sys.executable, "-m", "ruff", *check, "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("command", ["simulate", "inspect"])
def test_subcommands_that_need_no_trainer_start_without_lightning(command):
    """Lightning takes seconds to import: `asteroid simulate --help` took 7 s with it (issue 30)."""
    code = f"import sys, asteroid.commands.{command}; print('pytorch_lightning' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "False"


def test_the_data_generator_knows_nothing_of_training():
    """simulation/ (GFN2-xTB MD) sits below the data: it imports no model, data module or Lightning code."""
    upward = {
        name: sorted(m for m in imported_modules(path) if m.startswith(("asteroid.models", "asteroid.training.module",
                                                                         "asteroid.data", "asteroid.lightning_cli")))
        for name, path in modules().items()
        if name.startswith("asteroid.simulation")
    }  # fmt: skip
    assert {name: found for name, found in upward.items() if found} == {}
