"""`asteroid export`: a checkpoint made fit to ship: its weights, config and data record, no optimizer state."""

from __future__ import annotations

import hashlib
import shlex
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from asteroid.arguments import CommandParser
from asteroid.checkpoints import (
    CONFIG_KEY,
    DATA_KEY,
    PROVENANCE_KEY,
    RUN_CONFIG_KEY,
    check_finite_weights,
    read_checkpoint,
    resolve_ckpt_path,
)
from asteroid.errors import ConfigError
from asteroid.fileio import atomic_output, not_an_input, writable_output

KEPT = (CONFIG_KEY, RUN_CONFIG_KEY, DATA_KEY, "state_dict", "global_step", "pytorch-lightning_version")


def file_digest(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str | None:
    """The git commit of the code, marked where the working tree differs from it; None outside a git clone."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + (" with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str]) -> int:
    parser = CommandParser(
        prog="asteroid export",
        description="Write a checkpoint's weights, config and data record without its optimizer state (a third "
        "of the size). `asteroid.load` and `asteroid rollout` take it as they take any checkpoint; `asteroid fit "
        "--ckpt_path` starts a new run (a fine-tune) from it instead of resuming. Records the command and data.",
    )
    parser.add_argument("--ckpt_path", required=True, help="the trained checkpoint (or `last` of --name)")
    parser.add_argument("--name", default="asteroid", help="run name for --ckpt_path last")
    parser.add_argument("--out", required=True, help="the file to write")
    parser.add_argument("--command", default=None, help="the command that trained it, recorded (e.g. make pretrain)")
    args = parser.parse_args(argv)
    source = resolve_ckpt_path(args.ckpt_path, args.name)
    out = writable_output(args.out)
    not_an_input(out, [("checkpoint", source)])
    checkpoint = read_checkpoint(source)
    missing = [key for key in (CONFIG_KEY, RUN_CONFIG_KEY, DATA_KEY, "state_dict") if key not in checkpoint]
    if missing:
        raise ConfigError(f"{source}: lacks {', '.join(missing)}; train it again with this version")
    check_finite_weights(checkpoint["state_dict"], source)
    run_config = yaml.safe_load(checkpoint[RUN_CONFIG_KEY])
    data = [Path(s["path"]) for s in run_config.get("data", {}).get("sources", [])]
    shipped = {key: checkpoint[key] for key in KEPT if key in checkpoint}
    shipped[PROVENANCE_KEY] = {
        "command": args.command or f"asteroid fit --config <{RUN_CONFIG_KEY}>",
        "exported_from": str(source),
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "exported_by": " ".join(["asteroid export", *map(shlex.quote, argv)]),
        "code": code_version(),
        "steps": checkpoint.get("global_step"),
        "cpu_minutes": round(checkpoint.get("callbacks", {}).get("CPUTimeBudget", {}).get("spent", 0.0) / 60, 1),
        "data": {str(path): file_digest(path) if path.is_file() else None for path in data},
    }
    with atomic_output(out) as handle:
        torch.save(shipped, handle)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB, {shipped[PROVENANCE_KEY]['steps']} steps, {len(data)} data files")
    return 0
