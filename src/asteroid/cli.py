"""The `asteroid` command: Lightning's fit / validate / test / predict, plus our own subcommands."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from argparse import ArgumentError

import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.exceptions import SIGTERMException

from asteroid.checkpoints import names_a_config, with_stored_config
from asteroid.config import describe_parse_error, option_value, quiet_lightning, with_base_configs
from asteroid.data.datamodule import TrajectoryDataModule
from asteroid.errors import AsteroidError, ConfigError
from asteroid.lightning_cli import AsteroidCLI
from asteroid.module import ForecastModule

# subcommand -> (module with `main(argv) -> int`, one-line help)
COMMANDS = {
    "simulate": ("asteroid.commands.simulate", "generate a GFN2-xTB MD trajectory (MD17-format .npz)"),
    "inspect": ("asteroid.commands.inspect", "summarise a trajectory file: frames, atoms, dt, time order"),
    "compare": ("asteroid.commands.compare", "train models side by side on the same windows; write the accuracy table"),
    "rollout": (
        "asteroid.commands.rollout",
        "iterate a trained model into a long trajectory file (xyz, dcd, pdb, h5, npz)",
    ),
    "analyze": ("asteroid.commands.analyze", "physical checks of a predicted trajectory against a reference one"),
    "benchmark": ("asteroid.commands.benchmark", "wall time per simulated picosecond: GFN2-xTB MD against the model"),
}


def choose_threads() -> None:
    """torch's CPU threads for a training or test run, unless OMP_NUM_THREADS says: one on up to 2 cores, where
    `make train EXP=ethanol` ran 6x faster on one thread than on torch's default two (their steps are too small
    to share, and a second thread waits on whatever else runs); half the cores, at most 4, on larger machines
    (not measured here)."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0))
    threads = 1 if cores <= 2 else min(4, cores // 2)
    torch.set_num_threads(threads)
    print(f"asteroid: {threads} torch thread(s) on {cores} core(s); set OMP_NUM_THREADS to choose", file=sys.stderr)


def with_checkpoint_config(argv: list[str]) -> list[str]:
    """`asteroid test --ckpt_path CKPT` with no --config: the config stored in the checkpoint, before the rest."""
    ckpt_path = option_value(argv, "--ckpt_path", default=None)
    if len(argv) < 2 or names_a_config(argv) or ckpt_path is None:
        return argv
    return [argv[0], *with_stored_config(argv[1:], ckpt_path)[0]]


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
        quiet_lightning()
        if argv and argv[0] in ("fit", "validate", "test", "predict"):
            choose_threads()
        expanded = with_base_configs(with_checkpoint_config(argv))
        try:
            AsteroidCLI(
                ForecastModule,
                TrajectoryDataModule,
                subclass_mode_model=False,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"exit_on_error": False, "allow_abbrev": False},
                args=expanded,
            )
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
