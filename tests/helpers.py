"""Building blocks shared by the tests: tiny trajectories, topologies and a callback that simulates a crash."""
import numpy as np
import pytorch_lightning as pl


ETHANOL_Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])


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
    arrays = dict(R=R.astype(np.float64), z=z, E=np.arange(T, dtype=np.float64)[:, None],
                  F=np.ones((T, N, 3)), name="test", theory="PBE+vdW-TS", md5="0" * 32, type="d")
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



class CrashAtStep(pl.Callback):
    """Raise in the middle of training, as a killed job would stop."""

    def __init__(self, step: int = 12):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")
