"""LightningCLI with our defaults, and building a model and its data from configs or from a checkpoint alone."""

from __future__ import annotations

from argparse import ArgumentError
from pathlib import Path

import yaml
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary, ProgressBar
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.plugins.io import CheckpointIO

from asteroid.checkpoints import (
    CONFIG_KEY,
    DATA_KEY,
    check_checkpoint_config,
    check_finite_weights,
    is_weights_only,
    load_state,
    names_a_config,
    read_checkpoint,
    resolve_ckpt_path,
    with_stored_config,
)
from asteroid.config import describe_parse_error, quiet_lightning, with_base_configs
from asteroid.data.datamodule import TrajectoryDataModule
from asteroid.data.signature import DataSignature
from asteroid.errors import ConfigError
from asteroid.runs import LAST, AtomicCheckpointIO, RunLogger, checkpoint_version, run_dir
from asteroid.training.callbacks import (
    CheckpointOnInterrupt,
    ConfigInCheckpoint,
    InitialWeights,
    ParameterSummary,
    PredictionWriter,
    RunProgressBar,
    ValidateLastStep,
)
from asteroid.training.module import ForecastModule

# values the data module decides and the net must agree with
LINKED = ("history", "horizon")


class AsteroidCLI(LightningCLI):
    """LightningCLI with our defaults: runs/<name>/version_N/ for logs, tables and checkpoints (see asteroid.runs),
    and no silent overrides."""

    _initial_weights: str | None = None  # fit from a weights-only checkpoint: the file it starts from (a fine-tune)

    def add_arguments_to_parser(self, parser):
        parser.add_argument(
            "--extends", default=None, help="in a config file: the base config it builds on (see `with_base_configs`)"
        )
        parser.add_argument(
            "--name",
            default="asteroid",
            help="run name: each run writes logs, tables and checkpoints in its own "
            "runs/<name>/version_N; --ckpt_path last resumes the newest one",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="after `fit`, run `test` on the best checkpoint and print the table",
        )
        for key in LINKED:
            parser.link_arguments(f"data.{key}", f"model.net.init_args.{key}", apply_on="instantiate")

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "verbose" in self._subcommand_method_arguments[subcommand]:
            parser.set_defaults(verbose=False)  # validate / test: our table only, not Lightning's box too
        return parser

    # ---- guards against silent surprises ---------------------------------------------------------------------
    def _set_seed(self):
        seed = self._part(self.config, self.subcommand).get("seed_everything")
        if not isinstance(seed, bool) and seed is not None and not 0 <= seed < 2**32:
            raise ConfigError(f"seed_everything must be between 0 and {2**32 - 1} (or true / false), got {seed}")
        super()._set_seed()

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
                raise ConfigError(
                    f"model.net.init_args.{key}={given} conflicts with the data windows "
                    f"({key}={actual}); it is set from data.{key}: remove it from the model"
                )

    def _parse_ckpt_path(self):
        """`last` becomes the newest last.ckpt of the run; and where Lightning lets a checkpoint's stored
        hyperparameters override the config silently, refuse instead."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.ckpt_path = resolve_ckpt_path(config.get("ckpt_path"), config.name)
        if ckpt_path in (None, "best"):
            return
        checkpoint = read_checkpoint(ckpt_path)
        if subcommand == "fit" and is_weights_only(checkpoint):  # fine-tune: only the network must be the same
            check_checkpoint_config(
                {CONFIG_KEY: {"net": checkpoint.get(CONFIG_KEY, {}).get("net")}},
                ckpt_path,
                self._model_config(subcommand),
            )
            self._initial_weights, config.ckpt_path = ckpt_path, None
        else:
            check_checkpoint_config(checkpoint, ckpt_path, self._model_config(subcommand))

    @staticmethod
    def _part(config, subcommand: str | None):
        """A subcommand's part of a config (all of it for a CLI built with run=False)."""
        return config if subcommand is None else config[subcommand]

    def _model_config(self, subcommand: str | None) -> dict:
        config = self._part(self.config, subcommand)
        return yaml.safe_load(self._parser(subcommand).dump(config, skip_link_targets=False))["model"]

    def _run_config(self, subcommand: str | None) -> str:
        """The resolved config as YAML, less what only this invocation meant (its checkpoint, its base files). Nulls
        are kept: a null that overrides a default (`check_val_every_n_epoch: null`) is part of the run."""
        config = yaml.safe_load(self._parser(subcommand).dump(self._part(self.config, subcommand), skip_none=False))
        # the subcommand's own arguments (ckpt_path, weights_only, ...) are this invocation's, not the run's
        own = getattr(self, "_subcommand_method_arguments", {}).get(subcommand, ())
        for key in ("ckpt_path", "extends", "config", *own):
            config.pop(key, None)
        return yaml.safe_dump(config, sort_keys=False)

    # ---- defaults for logs and checkpoints ---------------------------------------------------------------------
    def instantiate_trainer(self, **kwargs):
        config = self._part(self.config_init, self.subcommand)
        trainer_config = {**config.get("trainer", {}), **kwargs}
        interval = trainer_config.get("val_check_interval")
        if interval is not None and not interval > 0:  # Lightning takes 0 and fails at the first validation
            raise ConfigError(
                f"trainer.val_check_interval must be > 0 (training steps, or a fraction of an epoch), got {interval}"
            )
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
        callbacks += self._default_callbacks(trainer_config, callbacks) + self._required_callbacks()
        trainer_config["callbacks"] = callbacks
        return self._instantiate_trainer(trainer_config, [])

    def _default_callbacks(self, trainer_config: dict, listed: list) -> list:
        """Callbacks a config may replace: each is added only when the config's `trainer.callbacks` lists none of its
        kind (a `ModelCheckpoint`, a progress bar, a model summary, a `LearningRateMonitor`). They are not in
        base.yaml because they depend on the subcommand (test and predict must not hold checkpoint callbacks) and a
        config that does not extend base.yaml needs them too."""

        def listed_kind(kind) -> bool:
            return any(isinstance(c, kind) for c in listed)

        defaults = []
        if trainer_config.get("enable_checkpointing", True) is not False and not listed_kind(ModelCheckpoint):
            # In the logger's version_N/checkpoints. Two callbacks: Lightning's save_last only writes last.ckpt
            # when the best one changes. A resumed run that saves a step again replaces its file (no "-v1" copy).
            defaults.append(
                ModelCheckpoint(
                    monitor="val/mse_mean",
                    filename="best-epoch{epoch:03d}-step{step}",
                    auto_insert_metric_name=False,
                    enable_version_counter=False,
                )
            )
            defaults.append(ModelCheckpoint(filename=Path(LAST).stem, enable_version_counter=False))
        if trainer_config.get("enable_progress_bar", True) is not False and not listed_kind(ProgressBar):
            defaults.append(RunProgressBar())
        fit = self.subcommand == "fit"
        if fit and trainer_config.get("enable_model_summary", True) is not False and not listed_kind(ModelSummary):
            defaults.append(ParameterSummary())  # plain text: Lightning's rich one leaves escape codes in notebooks
        if trainer_config["logger"] is not False and not listed_kind(LearningRateMonitor):
            defaults.append(LearningRateMonitor("step"))
        return defaults

    def _required_callbacks(self) -> list:
        """Callbacks every run of the subcommand needs, whatever its config: the config stored in each checkpoint;
        in fit, the validation at the last step and the checkpoint on Ctrl+C or SIGTERM; in predict, the writer."""
        required = [ConfigInCheckpoint(self._model_config(self.subcommand), self._run_config(self.subcommand))]
        if self.subcommand == "fit":
            required += [ValidateLastStep(), CheckpointOnInterrupt()]
            if self._initial_weights is not None:
                required.append(InitialWeights(self._initial_weights))
        if self.subcommand == "predict":
            required.append(PredictionWriter())
        return required

    def after_fit(self):
        config = self._part(self.config_init, self.subcommand)
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        if config.test_after_fit:  # our table only (ForecastModule.on_test_epoch_end), not Lightning's box too
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
        if self.trainer.is_global_zero:
            if run_dir(self.trainer):
                print(f"TensorBoard logs: {run_dir(self.trainer)}   (make tensorboard)")
            if best:
                print(f"best checkpoint: {best}\nlast checkpoint: {Path(checkpoint.dirpath) / LAST}")


def known_options() -> list[str]:
    """The options a config and the command line take (`--trainer.max_steps`, `--data.spacing`, ...), for "did you
    mean" hints; read from the signatures, without building a parser."""
    import inspect

    from pytorch_lightning import Trainer

    from asteroid.models.asteroid.model import Asteroid

    def names(function, prefix):
        return [f"--{prefix}{p}" for p in inspect.signature(function).parameters if p not in ("self", "args", "kwargs")]

    return (
        ["--config", "--name", "--seed_everything", "--test_after_fit", "--ckpt_path", "--print_config"]
        + names(Trainer.__init__, "trainer.")
        + names(TrajectoryDataModule.__init__, "data.")
        + names(ForecastModule.__init__, "model.")
        + names(Asteroid.__init__, "model.net.init_args.")
    )


def build_cli(args: list[str], own_options: list[str] = (), **kwargs) -> AsteroidCLI:
    """AsteroidCLI of expanded `args` (run, or with run=False only built); a bad option or value is a one-line
    ConfigError, with the option meant among `own_options` (a subcommand's) and the config's."""
    quiet_lightning()
    try:
        return AsteroidCLI(
            ForecastModule,
            TrajectoryDataModule,
            subclass_mode_model=False,
            args=args,
            parser_kwargs={"exit_on_error": False, "allow_abbrev": False},
            **kwargs,
        )
    except ArgumentError as error:  # jsonargparse: an unknown option or a value of the wrong type
        raise ConfigError(describe_parse_error(str(error), args, [*own_options, *known_options()])) from None


def from_config(config_args: list[str], own_options: list[str] = ()) -> AsteroidCLI:
    """Model, data module and trainer of `--config ...` arguments, built but not run (for our own subcommands, whose
    `own_options` a mistyped option may have meant)."""
    return build_cli(with_base_configs(config_args), own_options, run=False)


def from_checkpoint_or_config(args: list[str], ckpt_path: str, own_options: list[str] = ()) -> tuple[AsteroidCLI, str]:
    """`from_config(args)` and the checkpoint file `ckpt_path` stands for; where `args` name no --config, the config
    is the one stored in the checkpoint (`last`: the newest last.ckpt of `--name`), with `args` as overrides."""
    if names_a_config(args):
        cli = from_config(args, own_options)
        return cli, resolve_ckpt_path(ckpt_path, cli.config.name)
    args, ckpt_path = with_stored_config(args, ckpt_path)
    return from_config(args, own_options), ckpt_path


def load_weights(cli: AsteroidCLI, ckpt_path: str | Path) -> tuple[ForecastModule, TrajectoryDataModule]:
    """The model of a config built with `from_config`, with the weights of `ckpt_path` (checked against the config
    and its data's layout), and its data module (`asteroid.api.forecaster.load_with_data` is the loader to call)."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise ConfigError(f"{ckpt_path}: checkpoint file not found")
    checkpoint = read_checkpoint(ckpt_path)
    if "state_dict" not in checkpoint:
        raise ConfigError(f"{ckpt_path}: not a readable asteroid checkpoint (no state_dict)")
    check_checkpoint_config(checkpoint, ckpt_path, cli._model_config(None))
    recorded = DataSignature.from_dict(checkpoint.get(DATA_KEY))
    cli.datamodule.check_signature(recorded, str(ckpt_path))  # the layout; atoms once set up
    check_finite_weights(checkpoint["state_dict"], ckpt_path)
    load_state(cli.model, checkpoint["state_dict"], ckpt_path)
    return cli.model.eval(), cli.datamodule
