"""Building blocks shared by the tests: tiny trajectories, topologies, a seconds-long training run, a callback
that simulates a crash and a checkpoint writer that kills its process while saving."""

import io
import json
import os
import signal
from pathlib import Path

import ase.io
import numpy as np
import pytorch_lightning as pl
import torch

from asteroid.runs import LAST, AtomicCheckpointIO

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
ETHANOL_Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
# ethanol's shipped GFN2-xTB minimum, (9, 3) Angstrom, atoms in ETHANOL_Z's order
ETHANOL_MINIMUM = ase.io.read(Path(__file__).resolve().parents[2] / "src/asteroid/structures/ethanol.xyz").positions


def harmonic_frames(T=60, N=5, seed=0):
    """Independent harmonic oscillators around a fixed structure: smooth, time-ordered frames (T, N, 3)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(scale=1.5, size=(N, 3))
    amplitude = rng.uniform(0.05, 0.2, size=(N, 3))
    omega = rng.uniform(0.05, 0.2, size=(N, 3))  # radians per frame: periods of 30-120 frames
    phase = rng.uniform(0, 2 * np.pi, size=(N, 3))
    t = np.arange(T)[:, None, None]
    return (base + amplitude * np.sin(omega * t + phase)).astype(np.float32)


def shuffled(R, seed=1):
    return R[np.random.default_rng(seed).permutation(len(R))]


def save_sgdml(path, R, z, **extra):
    """An npz laid out like the sGDML MD17 files (metadata keys, E of shape (T, 1))."""
    T, N = R.shape[:2]
    arrays = dict(
        R=R.astype(np.float64),
        z=z,
        E=np.arange(T, dtype=np.float64)[:, None],
        F=np.ones((T, N, 3)),
        name="test",
        theory="PBE+vdW-TS",
        md5="0" * 32,
        type="d",
    )
    arrays.update(extra)
    np.savez(path, **arrays)


def write_toy_trajectory(path, n_frames=600, z=ETHANOL_Z, seed=0):
    """Harmonic frames saved as an npz with its own dt_fs (0.5 fs); returns the coordinates written."""
    R = harmonic_frames(n_frames, len(z), seed)
    np.savez(path, R=R, z=np.asarray(z), dt_fs=0.5)
    return R


def md_topology():
    """O C H H H in one residue, matching harmonic_frames()' default five atoms."""
    import mdtraj as md

    topology = md.Topology()
    residue = topology.add_residue("MOL", topology.add_chain())
    for name, symbol in zip(["O1", "C1", "H1", "H2", "H3"], ["O", "C", "H", "H", "H"]):
        topology.add_atom(name, md.element.get_by_symbol(symbol), residue)
    return topology


def tiny_args(tmp_path, name="tiny", **overrides):
    """A few-second training run on a toy trajectory, with the shipped base config."""
    npz = tmp_path / "toy.npz"
    if not npz.exists():
        write_toy_trajectory(npz)
    args = {
        "--name": name,
        "--data.sources": json.dumps([{"path": str(npz)}]),
        "--data.history": "3",
        "--data.horizon": "2",
        "--data.spacing": "2",
        "--data.batch_size": "8",
        "--data.cache_dir": str(tmp_path / "cache"),
        "--model.net.init_args.hidden": "16",
        "--model.net.init_args.spatial_layers": "1",
        "--trainer.max_steps": "-1",
        "--trainer.max_epochs": "4",
        "--trainer.val_check_interval": "null",
        "--trainer.check_val_every_n_epoch": "1",
        "--trainer.limit_train_batches": "5",
        "--trainer.limit_val_batches": "2",
        "--trainer.limit_test_batches": "2",
        "--trainer.enable_progress_bar": "false",
        "--trainer.enable_model_summary": "false",
        "--trainer.log_every_n_steps": "1",
        **overrides,
    }
    return ["--config", str(EXPERIMENTS / "base.yaml")] + [x for kv in args.items() for x in kv]


class CrashAtStep(pl.Callback):
    """Raise in the middle of training, as a killed job would stop."""

    def __init__(self, step: int = 12):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class KillWhileSaving(AtomicCheckpointIO):
    """The run's checkpoint writer, except that it SIGKILLs its own process halfway through writing the `nth`
    last.ckpt: a kill while saving, at a moment a test can count on."""

    def __init__(self, nth: int = 2):
        super().__init__()
        self.nth, self.saved = nth, 0

    def write(self, checkpoint, handle):
        if Path(handle.name).name.startswith(f".{LAST}."):
            self.saved += 1
            if self.saved == self.nth:
                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                handle.write(buffer.getvalue()[: buffer.tell() // 2])
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        super().write(checkpoint, handle)


def vibrating(T=4000, amplitude=0.03, seed=0, base=None):
    """An equilibrium-like trajectory (T, N, 3): every coordinate oscillates about the minimum with its own frequency
    (periods of 30 to 120 frames); `amplitude` plays the temperature."""
    base = ETHANOL_MINIMUM if base is None else base
    rng = np.random.default_rng(seed)
    omega = rng.uniform(0.05, 0.2, size=base.shape)
    phase = rng.uniform(0, 2 * np.pi, size=base.shape)
    return base + amplitude * np.sin(omega * np.arange(T)[:, None, None] + phase)
