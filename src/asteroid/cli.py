"""The `asteroid` command: Lightning's fit / validate / test / predict, plus our own subcommands."""
from __future__ import annotations

import importlib
import re
import signal
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

import torch
import yaml
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.plugins.io import CheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from asteroid.callbacks import (CONFIG_KEY, CheckpointOnInterrupt, ModelConfigInCheckpoint, PredictionWriter,
                                ValidateLastStep)
from asteroid.data.datamodule import TrajectoryDataModule
from asteroid.errors import AsteroidError, ConfigError, DivergedError
from asteroid.module import DATA_KEY, ForecastModule, run_dir
from asteroid.runs import LAST, ROOT, AtomicCheckpointIO, RunLogger, checkpoint_version, latest_checkpoint

# subcommand -> (module with `main(argv) -> int`, one-line help)
COMMANDS = {
    "simulate": ("asteroid.simulate", "generate a GFN2-xTB MD trajectory (MD17-format .npz)"),
    "inspect": ("asteroid.data.inspect", "summarise a trajectory file: frames, atoms, dt, time order"),
    "compare": ("asteroid.compare", "train models side by side on the same windows; write the accuracy table"),
    "rollout": ("asteroid.rollout", "iterate a trained model into a long trajectory file (xyz, dcd, pdb, h5, npz)"),
    "analyze": ("asteroid.analysis", "physical checks of a predicted trajectory against a reference one"),
    "benchmark": ("asteroid.benchmark", "wall time per simulated picosecond: GFN2-xTB MD against the model"),
}
# values the data module decides and the net must agree with
LINKED = ("history", "horizon")


class AsteroidCLI(LightningCLI):
    """LightningCLI with our defaults: runs/<name>/version_N/ for logs, tables and checkpoints (see asteroid.runs),
    and no silent overrides."""

    def add_arguments_to_parser(self, parser):
        parser.add_argument("--extends", default=None,
                            help="in a config file: the base config it builds on (see `with_base_configs`)")
        parser.add_argument("--name", default="asteroid",
                            help="run name: each run writes logs, tables and checkpoints in its own "
                                 "runs/<name>/version_N; --ckpt_path last resumes the newest one")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="after `fit`, run `test` on the best checkpoint and print the table")
        for key in LINKED:
            parser.link_arguments(f"data.{key}", f"model.net.init_args.{key}", apply_on="instantiate")

    # ---- guards against silent surprises ---------------------------------------------------------------------
    def before_instantiate_classes(self):
        config = self._part(self.config, self.subcommand)
        # jsonargparse overwrites a link target silently: remember what the user wrote to compare afterwards.
        net_args = config.model.net.get("init_args") or {}
        self._user_linked = {k: net_args.get(k) for k in LINKED if net_args.get(k) is not None}

    def after_instantiate_classes(self):
        super().after_instantiate_classes()
        for key, given in self._user_linked.items():
            actual = getattr(self.datamodule, key)
            if given != actual:
                raise ConfigError(f"model.net.init_args.{key}={given} conflicts with the data windows "
                                  f"({key}={actual}); it is set from data.{key}: remove it from the model")

    def _parse_ckpt_path(self):
        """`last` becomes the newest last.ckpt of the run; and where Lightning lets a checkpoint's stored
        hyperparameters override the config silently, refuse instead."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.ckpt_path = resolve_ckpt_path(config.get("ckpt_path"), config.name)
        if ckpt_path not in (None, "best"):
            check_checkpoint_config(read_checkpoint(ckpt_path), ckpt_path, self._model_config(subcommand))

    @staticmethod
    def _part(config, subcommand: str | None):
        """A subcommand's part of a config (all of it for a CLI built with run=False)."""
        return config if subcommand is None else config[subcommand]

    def _model_config(self, subcommand: str | None) -> dict:
        config = self._part(self.config, subcommand)
        return yaml.safe_load(self._parser(subcommand).dump(config, skip_link_targets=False))["model"]

    # ---- defaults for logs and checkpoints ---------------------------------------------------------------------
    def instantiate_trainer(self, **kwargs):
        config = self._part(self.config_init, self.subcommand)
        trainer_config = {**config.get("trainer", {}), **kwargs}
        interval = trainer_config.get("val_check_interval")
        if interval is not None and not interval > 0:  # Lightning takes 0 and fails at the first validation
            raise ConfigError(f"trainer.val_check_interval must be > 0 (training steps, or a fraction of an epoch), "
                              f"got {interval}")
        if trainer_config.get("logger") in (None, True):
            # a fit resumed from one of the run's checkpoints goes on in that run's directory; all else starts one
            ckpt_path = config.get("ckpt_path") if self.subcommand == "fit" else None
            version = checkpoint_version(config.name, ckpt_path) if ckpt_path not in (None, "best") else None
            trainer_config["logger"] = RunLogger(config.name, version)
        if self.subcommand in ("validate", "test", "predict"):
            # they save no checkpoint; without checkpoint callbacks Lightning does not restore their state either
            trainer_config["enable_checkpointing"] = False
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            trainer_config["plugins"] = plugins + [AtomicCheckpointIO()]
        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        callbacks = list(trainer_config.get("callbacks") or []) + [c for c in extra if c is not None]
        if trainer_config.get("enable_checkpointing", True) is not False and \
                not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            # In the logger's version_N/checkpoints. Two callbacks: Lightning's save_last only writes last.ckpt
            # when the best one changes. A resumed run that saves a step again replaces its file (no "-v1" copy).
            callbacks.append(ModelCheckpoint(monitor="val/mse_mean", filename="best-epoch{epoch:03d}-step{step}",
                                             auto_insert_metric_name=False, enable_version_counter=False))
            callbacks.append(ModelCheckpoint(filename=Path(LAST).stem, enable_version_counter=False))
        callbacks.append(ModelConfigInCheckpoint(self._model_config(self.subcommand)))
        if self.subcommand == "fit":
            callbacks += [ValidateLastStep(), CheckpointOnInterrupt()]
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter())
        if trainer_config["logger"] is not False:
            callbacks.append(LearningRateMonitor("step"))
        trainer_config["callbacks"] = callbacks
        return self._instantiate_trainer(trainer_config, [])

    def after_fit(self):
        config = self._part(self.config_init, self.subcommand)
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        if config.test_after_fit:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        if self.trainer.is_global_zero:
            if run_dir(self.trainer):
                print(f"TensorBoard logs: {run_dir(self.trainer)}   (make tensorboard)")
            if best:
                print(f"best checkpoint: {best}\nlast checkpoint: {Path(checkpoint.dirpath) / LAST}")


def check_checkpoint_config(checkpoint: dict, ckpt_path, model_config: dict) -> None:
    """Refuse a checkpoint trained with model settings other than the config's (Lightning would use them silently)."""
    conflicts = sorted(_differences(checkpoint.get(CONFIG_KEY, {}), model_config))
    if conflicts:
        raise ConfigError(f"{ckpt_path} was trained with other model settings ({'; '.join(conflicts)}); "
                          "Lightning would silently use the checkpoint's values: make the config match")


def resolve_ckpt_path(ckpt_path: str | None, name: str) -> str | None:
    """`--ckpt_path` as a file: `last` is the newest last.ckpt of run `name`; a path must be a file."""
    if ckpt_path == "last":
        last = latest_checkpoint(name)
        if last is None:
            raise ConfigError(f"--ckpt_path last: no {ROOT / name}/version_*/checkpoints/{LAST} to resume from "
                              f"(is --name {name} the run you mean?)")
        return str(last)
    if ckpt_path not in (None, "best") and not Path(ckpt_path).is_file():
        problem = "is a directory, not a checkpoint file" if Path(ckpt_path).is_dir() else "checkpoint file not found"
        raise ConfigError(f"{ckpt_path}: {problem}")
    return ckpt_path


def read_checkpoint(ckpt_path: str | Path) -> dict:
    """A checkpoint's contents; ConfigError for a truncated or foreign file."""
    try:
        return torch.load(ckpt_path, weights_only=True, map_location="cpu")
    except Exception as error:  # pickle, zip and unpickling errors all mean the same
        raise ConfigError(f"{ckpt_path}: not a readable asteroid checkpoint ({type(error).__name__})") from None


def from_config(config_args: list[str]) -> AsteroidCLI:
    """Model, data module and trainer of `--config ...` arguments, built but not run (for our own subcommands)."""
    _quiet_lightning()
    return AsteroidCLI(ForecastModule, TrajectoryDataModule, subclass_mode_model=False, run=False,
                       args=with_base_configs(config_args))


def load_trained(config_args: list[str], ckpt_path: str | Path) -> tuple[ForecastModule, TrajectoryDataModule]:
    """The config's model with a checkpoint's weights (refused if trained with other settings), and its data."""
    return load_weights(from_config(config_args), ckpt_path)


def load_weights(cli: AsteroidCLI, ckpt_path: str | Path) -> tuple[ForecastModule, TrajectoryDataModule]:
    """`load_trained` for a config already built with `from_config`."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise ConfigError(f"{ckpt_path}: checkpoint file not found")
    checkpoint = read_checkpoint(ckpt_path)
    if "state_dict" not in checkpoint:
        raise ConfigError(f"{ckpt_path}: not a readable asteroid checkpoint (no state_dict)")
    check_checkpoint_config(checkpoint, ckpt_path, cli._model_config(None))
    cli.datamodule.check_signature(checkpoint.get(DATA_KEY), str(ckpt_path))  # the layout; atoms once set up
    broken = [name for name, value in checkpoint["state_dict"].items()
              if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise DivergedError(f"{ckpt_path}: {len(broken)} weight tensor(s) hold NaN or infinity (the first: "
                            f"{broken[0]}): the run diverged; train again with a lower model.lr")
    try:
        cli.model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:  # shapes or keys: the config describes another network
        raise ConfigError(f"{ckpt_path}: its weights do not fit the config's model "
                          f"({str(error).splitlines()[1].strip() if chr(10) in str(error) else error})") from None
    return cli.model.eval(), cli.datamodule


def _quiet_lightning() -> None:
    # We hand LightningCLI the command line ourselves (configs expanded), which it warns about by default;
    # the second is Lightning's own use of a deprecated torch API, noise to our users.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # a run's directory is its own (see asteroid.runs): it holds checkpoints already only when the run is resumed
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    # validate / test / predict take only the weights from --ckpt_path: they have no checkpoint callbacks to restore
    warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks used to create")
    # our training order resumes in mid-epoch through the checkpoint (data.datamodule.EpochShuffle), not through
    # the loader's state_dict that Lightning looks for
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


def _differences(stored, given, prefix="model"):
    """'key: checkpoint X, config Y' for every leaf set in both that differs (None = not set, e.g. link targets)."""
    if isinstance(stored, dict) and isinstance(given, dict):
        for key in stored.keys() & given.keys():
            yield from _differences(stored[key], given[key], f"{prefix}.{key}")
    elif given is not None and stored != given:
        yield f"{prefix}: checkpoint {stored!r}, config {given!r}"


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
        expanded += [f"--config={config}" for config in _config_chain(Path(path))]
    return expanded


def describe_parse_error(message: str, argv: list[str]) -> str:
    """jsonargparse's complaint in one line: the full key, what is wrong with it, and where it was set."""
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
                    None, None, f"key {key!r} appears twice (line {key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _config_chain(path: Path, seen: tuple = ()) -> list[Path]:
    if not path.is_file():
        return [path]  # jsonargparse reports the missing file (or parses an inline yaml string)
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `extends` loops back to itself")
    try:
        content = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if content is None:
        raise ConfigError(f"{path}: the config file is empty")
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: a config file holds keys and values (`trainer:`, `model:`, `data:`), not "
                          f"{type(content).__name__} {content!r:.40}")
    base = content.get("extends")
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{path}: `extends` names one config file, got {base!r}")
    if base is None:
        return [path]
    return _config_chain(path.parent / base, seen + (path.resolve(),)) + [path]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in COMMANDS:
            module = importlib.import_module(COMMANDS[argv[0]][0])
            return module.main(argv[1:])
        if not argv or argv[0] in ("-h", "--help"):
            print("asteroid subcommands besides Lightning's fit / validate / test / predict:")
            for name, (_, help_text) in COMMANDS.items():
                print(f"  {name:10s} {help_text}")
            print()
        _quiet_lightning()
        expanded = with_base_configs(argv)
        try:
            AsteroidCLI(ForecastModule, TrajectoryDataModule, subclass_mode_model=False,
                        save_config_kwargs={"overwrite": True},
                        parser_kwargs={"exit_on_error": False, "allow_abbrev": False}, args=expanded)
        except ArgumentError as error:  # jsonargparse: an unknown option or a value of the wrong type
            raise ConfigError(describe_parse_error(str(error), expanded)) from None
        except MisconfigurationException as error:  # Lightning's word for a Trainer option that cannot work
            raise ConfigError(" ".join(str(error).split())) from None
        except SIGTERMException as stop:  # SIGTERM or Ctrl+C (callbacks.CheckpointOnInterrupt); it would exit 0
            return 128 + getattr(stop, "signum", signal.SIGTERM)
        return 0
    except AsteroidError as error:
        print(f"asteroid: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
