"""Checkpoint files: finding one (`last`), reading it, and refusing one trained with other settings."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from asteroid.config import option_value
from asteroid.errors import ConfigError, DivergedError
from asteroid.runs import LAST, ROOT, latest_checkpoint, newest

CONFIG_KEY = "asteroid_model_config"  # the model section of the run's config (see lightning_cli.ConfigInCheckpoint)
RUN_CONFIG_KEY = "asteroid_run_config"  # the whole resolved config, as YAML: the checkpoint alone rebuilds the run
DATA_KEY = "asteroid_data"  # the record of the windows and atoms it was trained on (data/signature.py)
TRAIN_POSITION_KEY = "asteroid_train_position"  # epoch and batches trained in it when the checkpoint was saved
PROVENANCE_KEY = "asteroid_provenance"  # of a shipped checkpoint: the command, data and code that made it

# The shipped pretrained model (`make pretrain` remakes it): `--ckpt_path pretrained`, `asteroid.load("pretrained")`.
PRETRAINED = "pretrained"
PRETRAINED_FILE = Path(__file__).with_name("weights") / "asteroid-pretrained.ckpt"


def is_weights_only(checkpoint: dict) -> bool:
    """A checkpoint with no optimizer state (the shipped one): it cannot be resumed, only started from."""
    return "optimizer_states" not in checkpoint


def check_checkpoint_config(checkpoint: dict, ckpt_path, model_config: dict) -> None:
    """Refuse a checkpoint trained with model settings other than the config's (Lightning would use them silently)."""
    conflicts = sorted(_differences(checkpoint.get(CONFIG_KEY, {}), model_config))
    if conflicts:
        raise ConfigError(
            f"{ckpt_path} was trained with other model settings ({'; '.join(conflicts)}); "
            "Lightning would silently use the checkpoint's values: make the config match"
        )


def resolve_ckpt_path(ckpt_path: str | None, name: str) -> str | None:
    """`--ckpt_path` as a file: `last` is the newest last.ckpt of run `name`, `pretrained` the shipped model; a path
    must be a file."""
    if ckpt_path == PRETRAINED:
        if not PRETRAINED_FILE.is_file():
            raise ConfigError(
                f"--ckpt_path pretrained: {PRETRAINED_FILE} is not in this installation (`make pretrain` makes it)"
            )
        return str(PRETRAINED_FILE)
    if ckpt_path == "last":
        last = latest_checkpoint(name)
        if last is None:
            raise ConfigError(
                f"--ckpt_path last: no {ROOT / name}/version_*/checkpoints/{LAST} to resume from "
                f"(is --name {name} the run you mean?)"
            )
        return str(last)
    if ckpt_path not in (None, "best") and not Path(ckpt_path).is_file():
        problem = "is a directory, not a checkpoint file" if Path(ckpt_path).is_dir() else "checkpoint file not found"
        raise ConfigError(f"{ckpt_path}: {problem}")
    return ckpt_path


def read_checkpoint(ckpt_path: str | Path) -> dict:
    """A checkpoint's contents (read once while the file is unchanged: a command that needs its config, its weights
    and its data record reads it once; treat the dict as read-only); ConfigError for a truncated or foreign file."""
    try:
        stat = Path(ckpt_path).stat()
    except OSError as error:
        raise ConfigError(f"{ckpt_path}: not a readable asteroid checkpoint ({type(error).__name__})") from None
    return _read_checkpoint(str(Path(ckpt_path).resolve()), (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=4)
def _read_checkpoint(ckpt_path: str, version) -> dict:
    try:
        return torch.load(ckpt_path, weights_only=True, map_location="cpu")
    except Exception as error:  # pickle, zip and unpickling errors all mean the same
        raise ConfigError(f"{ckpt_path}: not a readable asteroid checkpoint ({type(error).__name__})") from None


def _differences(stored, given, prefix="model"):
    """'key: checkpoint X, config Y' for every leaf set in both that differs (None = not set, e.g. link targets)."""
    if isinstance(stored, dict) and isinstance(given, dict):
        for key in stored.keys() & given.keys():
            yield from _differences(stored[key], given[key], f"{prefix}.{key}")
    elif given is not None and stored != given:
        yield f"{prefix}: checkpoint {stored!r}, config {given!r}"


def stored_config(ckpt_path: str | Path) -> str:
    """The whole config a checkpoint was trained with, as YAML text (`--config` takes it as it takes a file)."""
    text = read_checkpoint(ckpt_path).get(RUN_CONFIG_KEY)
    if text is None:
        raise ConfigError(
            f"{ckpt_path}: made before checkpoints stored their config; give the run's config with "
            "--config (runs/<name>/version_N/config.yaml)"
        )
    return text


def names_a_config(args: list[str]) -> bool:
    return any(arg == "--config" or arg.startswith("--config=") for arg in args)


def with_stored_config(args: list[str], ckpt_path: str) -> tuple[list[str], str]:
    """For `args` that name no --config: `--config <the config stored in the checkpoint>` before them, and the
    checkpoint file `ckpt_path` stands for (`last`: the newest last.ckpt of `--name`)."""
    ckpt_path = resolve_ckpt_path(ckpt_path, option_value(args, "--name", default="asteroid"))
    return ["--config", stored_config(ckpt_path), *args], ckpt_path


def check_finite_weights(state_dict: dict, ckpt_path) -> None:
    """DivergedError for a checkpoint whose weights hold NaN or infinity (a diverged run)."""
    broken = [
        name
        for name, value in state_dict.items()
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()
    ]
    if broken:
        raise DivergedError(
            f"{ckpt_path}: {len(broken)} weight tensor(s) hold NaN or infinity (the first: "
            f"{broken[0]}): the run diverged; train again with a lower model.lr"
        )


# The heads of the learned distributions whose output sizes changed when their residuals became correlated over
# the horizon (2026-11-30): a checkpoint from before cannot be loaded into them.
CORRELATED_HEADS = ("net.noise.mlp.", "net.bonded.length_head.")


def load_state(module: torch.nn.Module, state_dict: dict, ckpt_path, fresh: tuple[str, ...] = ()) -> list[str]:
    """module.load_state_dict, with a one-line ConfigError when the weights do not fit the module's network. Entries
    of the module under a prefix in `fresh` may be missing from state_dict (they keep their initial values); returns
    the prefixes that were."""
    own = {key: value for key, value in module.state_dict().items() if key not in state_dict}
    missing = sorted({prefix for key in own for prefix in fresh if key.startswith(prefix)})
    try:
        module.load_state_dict({**{k: v for k, v in own.items() if k.startswith(tuple(missing))}, **state_dict})
    except RuntimeError as error:  # shapes or keys: the config describes another network
        problems = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        if any("size mismatch" in problem and head in problem for problem in problems for head in CORRELATED_HEADS):
            raise ConfigError(
                f"{ckpt_path}: made by an older version, whose sampled residuals were uncorrelated over the "
                "horizon; this version's are correlated (2026-11-30): train it again"
            ) from None
        raise ConfigError(
            f"{ckpt_path}: its weights do not fit the config's model ({problems[0] if problems else error})"
        ) from None
    return missing


def trained_steps(name: str) -> int | None:
    """Optimizer steps of run `name` (its newest last.ckpt; 0 when it tested without saving one, as models without
    parameters do), or None when its folder is not here."""
    checkpoint = newest(name, "last.ckpt")
    if checkpoint is None:
        return 0 if newest(name, "test_metrics.csv") is not None else None
    return int(read_checkpoint(checkpoint)["global_step"])
