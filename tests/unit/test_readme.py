"""The README and the docs stay true: every `asteroid ...` command they show is accepted by today's command line.

Lightning's subcommands resolve the whole config (`--print_config`); our own subcommands parse their options and stop
before running. Running the examples for real is left to the tests of each subcommand, with tiny settings.
"""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from asteroid.arguments import CommandParser
from asteroid.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
# the front door, the user guide and the results index (what the README held before issue 29 moved it)
DOCS = [ROOT / "README.md", ROOT / "docs" / "guide.md", ROOT / "docs" / "results" / "README.md"]
README = "\n".join(path.read_text() for path in DOCS)


def readme_commands() -> list[str]:
    """`asteroid ...` in inline code and in bash blocks (continuation lines joined)."""
    inline = [" ".join(code.split()) for code in re.findall(r"`(asteroid [^`]+)`", README)]
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    commands = {" ".join(line.split()) for line in lines if line.startswith("asteroid ")} | set(inline)
    return sorted(c for c in commands if len(c.split()) > 2)  # not the bare names prose mentions


class Parsed(Exception):
    """Raised in place of running a subcommand once argparse has accepted its options."""


@pytest.fixture
def parse_only(monkeypatch):
    original = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = original(self, args, namespace)
        if isinstance(self, CommandParser):  # ours, not jsonargparse's subclass used by LightningCLI
            raise Parsed(extras)
        return namespace, extras

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)


def test_the_readme_shows_every_subcommand():
    shown = {command.split()[1] for command in readme_commands()}  # each with an example
    assert {"fit", "validate", "test", "predict", *COMMANDS} <= shown


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.split()[1] in COMMANDS])
def test_our_subcommand_examples_parse(command, parse_only):
    argv = shlex.split(command)[1:]
    with pytest.raises(Parsed) as parsed:
        main(argv)
    if argv[0] != "rollout":  # rollout hands options it does not know to the config (checked by its own tests)
        assert parsed.value.args[0] == [], f"{command}: options not accepted"


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.split()[1] not in COMMANDS])
def test_lightning_subcommand_examples_resolve_their_config(command, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_:
        main([*shlex.split(command)[1:], "--print_config"])
    assert exit_.value.code in (0, None), capsys.readouterr().err
    assert "model:" in capsys.readouterr().out


def test_the_readme_config_of_your_own_resolves_on_its_own(tmp_path, monkeypatch, capsys):
    """Written to a folder of its own and run from the project folder, as the README says (issue 30: it lacked the
    model and its `extends:` could not be found)."""
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", README, flags=re.S) if "extends:" in b)
    config = tmp_path / "elsewhere" / "my_run.yaml"
    config.parent.mkdir()
    config.write_text(block)
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as printed:
        main(["fit", "--config", str(config), "--print_config"])
    assert printed.value.code == 0
    resolved = capsys.readouterr().out
    assert "class_path: asteroid.models.Asteroid" in resolved and "name: my_run" in resolved


def test_the_readme_is_a_front_door():
    """At most 250 lines (nanoGPT's is 234): what it is, the commands, one Python example, the headline results with
    links; the rest lives in docs/ (issue 29)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    links = re.findall(r"\]\((docs/[^)#]+)", "\n".join(lines))
    assert links and all((ROOT / link).exists() for link in links), [
        link for link in links if not (ROOT / link).exists()
    ]
