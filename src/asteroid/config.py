"""Config files: `extends` chains, YAML that refuses a key given twice, jsonargparse's complaints in one line."""

from __future__ import annotations

import difflib
import logging
import re
import warnings
from pathlib import Path

import yaml

from asteroid.errors import ConfigError


def with_base_configs(argv: list[str]) -> list[str]:
    """Expand `--config X`, where file X says `extends: BASE`, into `--config BASE --config X` (recursively).

    jsonargparse merges consecutive configs key by key, so an experiment file states only what differs from its
    base; a base named inside a config file is resolved relative to that file.
    """
    expanded, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            path, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            path, i = arg.split("=", 1)[1], i + 1
        else:
            expanded.append(arg)
            i += 1
            continue
        if "\n" in path:  # the YAML text itself (a checkpoint's stored config): no file, no `extends`
            expanded.append(f"--config={path}")
            continue
        expanded += [f"--config={config}" for config in _config_chain(Path(path))]
    return expanded


def option_value(argv: list[str], option: str, default: str) -> str:
    """The last value given to `option` in `argv` (`--name X` or `--name=X`), or `default`."""
    value = default
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
    return value


def describe_parse_error(message: str, argv: list[str], known: list[str] = ()) -> str:
    """jsonargparse's complaint in one line: the full key, what is wrong with it, and where it was set; for an
    unknown option, the `known` options (`--trainer.max_steps`, ...) closest to it."""
    unknown = re.findall(r"unrecognized arguments: (--[^\s=]+)", message)
    if unknown:
        # an abbreviation (refused: --budget must not stand for --budget-minutes silently), else a near spelling
        close = [name for name in known if name.startswith(unknown[0])][:1]
        close = close or difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.75)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"{unknown[0]}: unknown option{hint} (--help lists them)"
    lines = [line.strip().lstrip("- ") for line in message.splitlines() if line.strip()]
    # a key of a class's arguments is nested: 'Parser key "model.net": ... Option 'hiddne' is not accepted'
    keys = re.findall(r'Parser key "([^"]+)"', message) + re.findall(r"Option '([^']+)' is not accepted", message)
    keys = keys or re.findall(r"does not accept option '([^']+)'", message)
    if not keys:
        return " ".join(lines)
    given = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Given value:")]
    if given:  # a Union: list the types it accepts
        types = [t for t in re.findall(r"Expected a <class '(\w+)'>", message) if t != "NoneType"]
        problem = f"expected {' or '.join(types)}, got {given[0]!r}"
    else:
        problem = re.sub(r"<class '(\w+)'>", r"\1", re.sub(r'Parser key "[^"]+":\s*', "", lines[-1]))
    key = ".init_args.".join(keys)
    where = _where_set(key.split("."), argv)
    return f"{key}: {problem}" + (f" ({where})" if where else "")


def _where_set(key: list[str], argv: list[str]) -> str:
    """Which argument set `key` last: a config file that holds it, or the command line ('' if neither)."""
    full = ".".join(key)
    for arg in reversed(argv):
        if arg.startswith("--config="):
            path = Path(arg.split("=", 1)[1])
            if path.is_file() and _holds(yaml.safe_load(path.read_text()), key):
                return f"in {path}"
        elif arg.startswith("--"):
            name = arg.split("=", 1)[0][2:]
            if full == name or full.startswith(name + ".") or name.startswith(full + "."):
                return "on the command line"
    return ""


def _holds(node, key: list[str]) -> bool:
    """Whether a loaded config has `key` (lists searched item by item; `init_args` may be left out)."""
    if not key:
        return True
    if isinstance(node, list):
        return any(_holds(item, key) for item in node)
    if not isinstance(node, dict):
        return False
    if key[0] in node:
        return _holds(node[key[0]], key[1:])
    return key[0] == "init_args" and _holds(node, key[1:])


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML whose mappings refuse a key given twice (plain YAML keeps the last one silently: a whole `model:`
    block could vanish without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def data_sources(path: str | Path) -> list[dict]:
    """`data.sources` of config file `path` as `asteroid fit` reads it: the last config of its `extends` chain that
    sets them."""
    sources = None
    for config in _config_chain(Path(path)):
        if not config.is_file():
            raise ConfigError(f"{config}: config file not found")
        data = yaml.safe_load(config.read_text()).get("data") or {}
        sources = data.get("sources", sources)
    if not isinstance(sources, list) or not all(isinstance(source, dict) for source in sources):
        raise ConfigError(f"{path}: data.sources is not a list of sources ({{path: ..., molecule: ...}}, ...)")
    return sources


def _config_chain(path: Path, seen: tuple = ()) -> list[Path]:
    if not path.is_file():
        return [path]  # jsonargparse reports the missing file (or parses an inline yaml string)
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `extends` loops back to itself")
    try:
        content = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; a config file is YAML text") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if content is None:
        raise ConfigError(f"{path}: the config file is empty")
    if not isinstance(content, dict):
        raise ConfigError(
            f"{path}: a config file holds keys and values (`trainer:`, `model:`, `data:`), not "
            f"{type(content).__name__} {content!r:.40}"
        )
    base = content.get("extends")
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{path}: `extends` names one config file, got {base!r}")
    if base is None:
        return [path]
    # beside the file first (the shipped experiments); else from where the command runs, so that a user's own
    # config anywhere can say `extends: experiments/base.yaml`
    beside = path.parent / base
    found = beside if beside.is_file() or not Path(base).is_file() else Path(base)
    return _config_chain(found, seen + (path.resolve(),)) + [path]


def quiet_lightning() -> None:
    # Lightning's start-up lines (GPU/TPU available, tips, "Seed set to 0", how it counts batches) say nothing a
    # user of ours acts on; its warnings stay.
    for name in (
        "pytorch_lightning.utilities.rank_zero",
        "lightning_fabric.utilities.seed",
        "lightning_fabric.utilities.rank_zero",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    # We hand LightningCLI the command line ourselves (configs expanded), which it warns about by default;
    # the second is Lightning's own use of a deprecated torch API, noise to our users.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # a run's directory is its own (see asteroid.runs): it holds checkpoints already only when the run is resumed
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    # validate / test / predict take only the weights from --ckpt_path: they have no checkpoint callbacks to restore
    warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks used to create")
    # our training order resumes in mid-epoch through the checkpoint (data.dataset.EpochShuffle), not through
    # the loader's state_dict that Lightning looks for
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
