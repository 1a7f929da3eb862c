"""The `asteroid` command: Lightning's fit / validate / test / predict, plus our own subcommands."""

from __future__ import annotations

import importlib
import signal
import sys
import threading

from asteroid.errors import AsteroidError, ConfigError, Interrupted

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
    "export": ("asteroid.commands.export", "a checkpoint fit to ship: weights, config, data record and provenance"),
}


def run_interruptible(command, argv: list[str]) -> int:
    """`command(argv)` with SIGTERM and SIGINT turned into `Interrupted` where the program is: outputs being written
    are removed (never left half-written or as hidden temporaries), and the command says so in one line and exits
    with 128 + the signal's number. (`fit` has its own: it stops at a step's end and saves a checkpoint.)"""

    def interrupt(signum, frame):
        raise Interrupted(signum)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = (
        {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)} if in_main_thread else {}
    )
    for signum in previous:
        signal.signal(signum, interrupt)
    try:
        return command(argv)
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        print(  # on a line of its own, whatever a progress bar left on the current one
            f"\nasteroid: stopped by {signal.Signals(signum).name}; outputs being written were removed, finished "
            "ones kept",
            file=sys.stderr,
        )
        return 128 + signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def with_checkpoint_config(argv: list[str]) -> list[str]:
    """`asteroid test --ckpt_path CKPT` with no --config: the config stored in the checkpoint, before the rest. A fit
    from a weights-only checkpoint (a fine-tune) is a new run: it tests after fitting, as `fit` does by default,
    whatever the run that made the weights did (the shipped model's pretraining skipped its own test)."""
    from asteroid.checkpoints import is_weights_only, names_a_config, read_checkpoint, with_stored_config
    from asteroid.config import option_value

    ckpt_path = option_value(argv, "--ckpt_path", default=None)
    if len(argv) < 2 or names_a_config(argv) or ckpt_path is None:
        return argv
    args, ckpt_file = with_stored_config(argv[1:], ckpt_path)
    if argv[0] == "fit" and is_weights_only(read_checkpoint(ckpt_file)):
        args = [*args[:2], "--test_after_fit", "true", *args[2:]]
    return [argv[0], *args]


def lightning_subcommand(argv: list[str]) -> int:
    """fit / validate / test / predict (and the help), through Lightning's CLI: imported here, so that our own
    subcommands and their --help start without loading Lightning (seconds)."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from asteroid.api.threads import choose_threads
    from asteroid.config import with_base_configs
    from asteroid.lightning_cli import build_cli

    if argv and argv[0] in ("fit", "validate", "test", "predict"):
        choose_threads()
    try:
        build_cli(with_base_configs(with_checkpoint_config(argv)), save_config_kwargs={"overwrite": True})
    except MisconfigurationException as error:  # Lightning's word for a Trainer option that cannot work
        raise ConfigError(" ".join(str(error).split())) from None
    except SIGTERMException as stop:  # SIGTERM or Ctrl+C (callbacks.CheckpointOnInterrupt); it would exit 0
        return 128 + getattr(stop, "signum", signal.SIGTERM)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in COMMANDS:
            module = importlib.import_module(COMMANDS[argv[0]][0])
            return run_interruptible(module.main, argv[1:])
        if not argv or argv[0] in ("-h", "--help"):
            print("asteroid subcommands besides Lightning's fit / validate / test / predict:")
            for name, (_, help_text) in COMMANDS.items():
                print(f"  {name:10s} {help_text}")
            print()
        return lightning_subcommand(argv)
    except AsteroidError as error:
        print(f"asteroid: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
