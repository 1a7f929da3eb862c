"""`rollout()` and `asteroid rollout`: long forecasts, written as files that mdtraj and ASE read back."""

import json
from collections import namedtuple

import ase.io
import mdtraj as md
import numpy as np
import pytest
import torch
from ase import Atoms

from asteroid.cli import main
from asteroid.data import load_trajectory
from asteroid.data.geometry import covalent_bonds
from asteroid.data.mdtraj_files import element_topology
from asteroid.errors import DivergedError
from asteroid.lightning_cli import from_config
from asteroid.models import LastFrame, LinearExtrapolation
from asteroid.models.bonded import BondedGeometry
from asteroid.models.rollout import rollout
from asteroid.simulation.xtb import structure_path

from helpers import ETHANOL_Z, EXPERIMENTS, harmonic_frames, tiny_args

FRAMES = 7  # not a multiple of the tiny model's horizon (2): the last forecast is cut
DT_FS = 1.0  # the tiny model's windows: frames 2 MD frames of 0.5 fs apart
Trained = namedtuple("Trained", "root args ckpt coordinates")


# ---- rollout() ---------------------------------------------------------------------------------------------------
def test_linear_extrapolation_rolls_out_constant_velocity():
    H, P, N = 3, 2, 4
    x0, velocity = torch.randn(N, 3), torch.randn(N, 3)
    history = (x0 + torch.arange(H)[:, None, None] * velocity)[None]  # (1, H, N, 3), one frame per time unit
    added = []
    frames = rollout(
        LinearExtrapolation(H, P),
        history,
        torch.ones(1, N, dtype=torch.long),
        torch.ones(1, N, dtype=torch.bool),
        7,
        added.append,
        keep_rigid_motion=True,
    )
    expected = x0 + torch.arange(H, H + 7)[:, None, None] * velocity
    assert frames.shape == (1, 7, N, 3) and sum(added) == 7
    torch.testing.assert_close(frames[0], expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("n_frames", [1, 2, 5])
def test_last_frame_rolls_out_exactly_n_frames_of_the_last_history_frame(n_frames):
    history = torch.randn(2, 3, 4, 3)
    frames = rollout(
        LastFrame(3, 2), history, torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool), n_frames
    )
    assert frames.shape == (2, n_frames, 4, 3)
    torch.testing.assert_close(frames, history[:, -1:].expand(-1, n_frames, -1, -1))


def test_a_forecast_holding_nan_stops_the_rollout_naming_its_frames():
    history = torch.randn(2, 3, 4, 3)
    history[1, -1, 2] = float("nan")  # a real atom: its held frame is NaN from the first forecast on
    with pytest.raises(DivergedError, match="the forecast of frames 1-2 holds NaN or infinity"):
        rollout(LastFrame(3, 2), history, torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool), 6)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, 2] = False  # the same NaN in a padded atom is nobody's forecast
    assert rollout(LastFrame(3, 2), history, torch.ones(2, 4, dtype=torch.long), mask, 6).shape == (2, 6, 4, 3)


# ---- asteroid rollout --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model fitted on harmonic vibrations around ethanol's structure (bonded, so files carry bonds)."""
    root = tmp_path_factory.mktemp("rollout")
    structure = ase.io.read(structure_path("ethanol"))
    vibration = harmonic_frames(600, len(structure))
    coordinates = (structure.positions + 0.5 * (vibration - vibration.mean(axis=0))).astype(np.float32)
    np.savez(root / "toy.npz", R=coordinates, z=structure.numbers, dt_fs=0.5)  # tiny_args trains on this file
    args = tiny_args(root, **{"--trainer.max_epochs": "1"})
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert main(["fit", *args, "--test_after_fit", "false"]) == 0
    return Trained(root, args, next(root.glob("runs/tiny/**/last.ckpt")), coordinates)


def roll(trained, out, *extra, args=None, ckpt=None):
    return main(
        [
            "rollout",
            *(trained.args if args is None else args),
            "--ckpt_path",
            str(ckpt or trained.ckpt),
            "--out",
            str(out),
            "--frames",
            str(FRAMES),
            "--no-progress",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def reference(trained):
    """The .npz rollout of the first test window, which every other format must reproduce."""
    out = trained.root / "reference" / "pred.npz"
    assert roll(trained, out) == 0
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


def error_of(capsys, code):
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("asteroid: error: ")
    return err[0]


def test_npz_holds_the_predictions_their_history_and_timing(trained, reference):
    R, history, start = reference["R"], reference["history"], int(reference["start_frame"][0])
    assert R.shape == (1, FRAMES, 9, 3) and history.shape == (1, 3, 9, 3) and np.isfinite(R).all()
    assert reference["dt_fs"] == DT_FS and reference["spacing"] == 2
    np.testing.assert_array_equal(reference["z"], ase.io.read(structure_path("ethanol")).numbers)
    # the history is the first test window's: frames 2 apart, in the last tenth of the trajectory
    assert start >= 0.9 * len(trained.coordinates)
    np.testing.assert_array_equal(history[0], trained.coordinates[start - 4 : start + 1 : 2])
    np.testing.assert_allclose(reference["time_fs"], DT_FS * np.arange(1, FRAMES + 1))


# suffix -> coordinate tolerance in Angstrom of the format (pdb has 3 decimals; the others store float32)
TOLERANCE = {".xyz": 1e-6, ".pdb": 1e-3, ".dcd": 1e-5, ".xtc": 6e-3, ".h5": 1e-5}


@pytest.mark.parametrize("suffix", list(TOLERANCE))
def test_every_format_reads_back_in_mdtraj_and_ase(trained, reference, suffix, tmp_path, capsys):
    out = tmp_path / f"pred{suffix}"
    assert (
        main(["rollout", *trained.args, "--ckpt_path", str(trained.ckpt), "--out", str(out), "--frames", str(FRAMES)])
        == 0
    )
    captured = capsys.readouterr()
    assert f"{FRAMES}/{FRAMES}" in captured.err and "frame/s" in captured.err  # the progress bar
    assert "frames/s" in captured.out
    expected, z = reference["R"][0], reference["z"]

    topology_file = tmp_path / "pred_topology.pdb"
    assert topology_file.is_file() == (suffix in (".dcd", ".xtc"))
    top = {".xyz": element_topology(z), ".dcd": str(topology_file), ".xtc": str(topology_file)}.get(suffix)
    traj = md.load(str(out), **({} if top is None else {"top": top}))
    assert traj.n_frames == FRAMES and traj.n_atoms == 9
    assert [atom.element.number for atom in traj.topology.atoms] == z.tolist()
    np.testing.assert_allclose(traj.xyz * 10.0, expected, atol=TOLERANCE[suffix])
    if suffix in (".pdb", ".h5", ".dcd", ".xtc"):  # bonds of the starting structure, as CONECT records in PDB
        bonds = covalent_bonds(z, reference["history"][0, -1]).T.tolist()
        bonded = md.load(str(topology_file)) if suffix in (".dcd", ".xtc") else traj
        assert sorted(sorted((a.index, b.index)) for a, b in bonded.topology.bonds) == sorted(bonds)
        assert len(bonds) >= 8  # ethanol's 8 covalent bonds at least
    if suffix == ".pdb":
        assert "CONECT" in out.read_text()
    if suffix in (".xyz", ".pdb"):
        images = ase.io.read(out, index=":")
        assert len(images) == FRAMES and all(np.array_equal(atoms.numbers, z) for atoms in images)
        np.testing.assert_allclose(np.stack([atoms.positions for atoms in images]), expected, atol=TOLERANCE[suffix])
    # every format states the frame spacing (PDB in a REMARK, DCD in its header's time step), read back without flags
    topology = str(topology_file) if suffix in (".xtc", ".dcd") else None
    if suffix != ".npz":
        assert load_trajectory(out, topology=topology).dt_fs == pytest.approx(DT_FS, rel=1e-4)
    if suffix in (".pdb", ".h5", ".dcd", ".xtc"):  # atoms named by element and count, as viewers label them
        assert [atom.name for atom in traj.topology.atoms][:4] == ["C1", "C2", "O1", "H1"]
    if suffix == ".pdb":
        assert [line.split()[1] for line in out.read_text().splitlines() if line.startswith("MODEL")][:2] == ["1", "2"]


def test_last_is_the_newest_last_checkpoint_of_the_configs_run(trained, reference, tmp_path, monkeypatch):
    monkeypatch.chdir(trained.root)  # where runs/tiny is
    assert roll(trained, tmp_path / "last.npz", ckpt="last") == 0
    with np.load(tmp_path / "last.npz") as result:
        np.testing.assert_array_equal(result["R"], reference["R"])


def test_batch_rolls_out_test_windows_spread_over_the_split(trained, reference, tmp_path):
    # the forecast means: a batch's draws come in another order than one start's, its means do not
    assert roll(trained, tmp_path / "batch.npz", "--batch", "3", "--mean") == 0
    assert roll(trained, tmp_path / "one.npz", "--mean") == 0
    assert roll(trained, tmp_path / "pred.xyz", "--batch", "3", "--mean") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "batch.npz",
        "one.npz",
        "pred_000.xyz",
        "pred_001.xyz",
        "pred_002.xyz",
    ]
    with np.load(tmp_path / "batch.npz") as batch:
        R, starts = batch["R"], batch["start_frame"]
    assert R.shape == (3, FRAMES, 9, 3)
    assert starts[0] == reference["start_frame"][0] and starts[0] < starts[1] < starts[2]
    assert abs((starts[2] - starts[1]) - (starts[1] - starts[0])) <= 1  # evenly spread, to the last test window
    assert starts[2] >= len(trained.coordinates) - 1 - 2 * 2 - 2  # its 2 targets end within a frame of the end
    np.testing.assert_allclose(R[0], np.load(tmp_path / "one.npz")["R"][0], atol=1e-5)
    for i in range(3):
        positions = np.stack([atoms.positions for atoms in ase.io.read(tmp_path / f"pred_{i:03d}.xyz", ":")])
        np.testing.assert_allclose(positions, R[i], atol=1e-6)


def test_init_file_continues_from_its_last_frames(trained, reference, tmp_path):
    start, z = int(reference["start_frame"][0]), reference["z"]
    frames = trained.coordinates[start - 4 : start + 1]
    # no time in the file: --dt-fs says it
    ase.io.write(tmp_path / "mine.extxyz", [Atoms(numbers=z, positions=r) for r in frames])
    # a file that states its spacing may be coarser, by whole frames of the history's spacing
    ase.io.write(tmp_path / "coarse.extxyz", [Atoms(numbers=z, positions=r, info={"dt_fs": 1.0}) for r in frames[::2]])
    for name, extra in (("mine.extxyz", ["--dt-fs", "0.5"]), ("coarse.extxyz", [])):
        out = tmp_path / f"{name}.npz"
        assert roll(trained, out, "--init", str(tmp_path / name), *extra) == 0
        with np.load(out) as result:
            np.testing.assert_allclose(result["history"], reference["history"], atol=1e-6)
            # the same to within the bond projection's tolerance, where it stops depending on the history's last digits
            np.testing.assert_allclose(result["R"], reference["R"], atol=BondedGeometry(1, 1).tolerance)
            assert result["dt_fs"] == DT_FS and str(result["source"]).endswith(name)


def test_init_rolls_out_from_the_checkpoint_alone_with_the_data_files_removed(
    trained, reference, tmp_path, monkeypatch
):
    """Nothing at rollout time may come from the training data or the test split: the bonded geometry, the noise
    model and the training temperature travel in the checkpoint."""
    monkeypatch.chdir(tmp_path)  # the report's TensorBoard logs go to runs/ here, not into the project (issue 30)
    start, z = int(reference["start_frame"][0]), reference["z"]
    init = write_init(tmp_path / "mine.extxyz", trained.coordinates[start - 60 : start + 1], z)
    assert roll(trained, tmp_path / "with_data.npz", "--init", str(init)) == 0
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    data = [trained.root / "toy.npz", trained.root / "cache"]
    for path in data:
        path.rename(hidden / path.name)
    try:
        assert roll(trained, tmp_path / "without.npz", "--init", str(init), "--report") == 0
    finally:
        for path in data:
            (hidden / path.name).rename(path)
    with np.load(tmp_path / "with_data.npz") as a, np.load(tmp_path / "without.npz") as b:
        np.testing.assert_array_equal(a["R"], b["R"])
    report = json.loads((tmp_path / "without_npz_report" / "report.json").read_text())
    assert report["reference"]["frames"] == 61 and report["rollout_options"]["sampled"] is True


def write_init(path, frames, z, dt_fs=0.5):
    ase.io.write(path, [Atoms(numbers=z, positions=r, info={} if dt_fs is None else {"dt_fs": dt_fs}) for r in frames])
    return path


def test_bad_init_files_are_refused_naming_the_file(trained, reference, tmp_path, capsys):
    z, frames = reference["z"], trained.coordinates[:5]
    other_atoms = z.copy()
    other_atoms[2] = 7
    cases = {
        write_init(
            tmp_path / "other.extxyz", frames, other_atoms
        ): "are not those of any molecule the model was trained on",
        write_init(
            tmp_path / "fewer.extxyz", frames[:, :8], z[:8]
        ): "are not those of any molecule the model was trained on",
        write_init(tmp_path / "odd_dt.extxyz", frames, z, dt_fs=0.3): "not a whole number",
        write_init(tmp_path / "short.extxyz", frames[:4], z): "the history needs 5",
        tmp_path / "absent.extxyz": "no such file",
        write_init(tmp_path / "timeless.extxyz", frames, z, dt_fs=None): "does not say the time between its "
        "frames; pass --dt-fs (the model's data were 0.5 fs apart)",
    }
    for path, problem in cases.items():
        message = error_of(capsys, roll(trained, tmp_path / "out" / "pred.xyz", "--init", str(path)))
        assert str(path) in message and problem in message
    assert not (tmp_path / "out").exists()


def test_bad_options_are_one_line_errors_and_leave_no_file(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    out = tmp_path / "out" / "pred.xyz"
    cases = [
        ((), {"--ckpt_path": str(tmp_path / "none.ckpt")}, "none.ckpt: checkpoint file not found"),
        ((), {"--ckpt_path": "last"}, "--ckpt_path last: no runs/tiny/version_*/checkpoints/last.ckpt"),
        (("--frames", "0"), {}, "argument --frames: must be positive, got 0"),
        (("--threads", "0"), {}, "argument --threads: must be positive, got 0"),
        (("--batch", "100000"), {}, "the test split has only"),
        (("--batch", "2", "--init", str(tmp_path / "x.xyz")), {}, "--init gives one initial condition"),
        ((), {"--out": str(tmp_path / "out" / "pred.mol2")}, "unknown output suffix '.mol2'"),
        (("--data.horizon", "1"), {}, "trained on windows of frames [0, 2, 4] -> [6, 8], but the data settings give"),
    ]
    for extra, replaced, problem in cases:
        argv = ["rollout", *trained.args, "--ckpt_path", str(trained.ckpt), "--out", str(out), "--no-progress"]
        for option, value in replaced.items():
            argv[argv.index(option) + 1] = value
        assert problem in error_of(capsys, main([*argv, *extra]))
    missing_config = ["--config", str(tmp_path / "nowhere.yaml"), *trained.args[2:]]
    assert "nowhere.yaml: config file not found" in error_of(capsys, roll(trained, out, args=missing_config))
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_meets_only_the_windows_and_atoms_it_was_trained_on(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(trained.root)
    message = error_of(capsys, roll(trained, tmp_path / "pred.xyz", "--data.spacing", "3"))
    assert (
        "trained on windows of frames [0, 2, 4] -> [6, 8], but the data settings give [0, 3, 6] -> [9, 12]" in message
        and not (tmp_path / "pred.xyz").exists()
    )
    tested = main(["test", *trained.args, "--ckpt_path", str(trained.ckpt), "--data.spacing", "3"])
    assert "trained on windows of frames" in error_of(capsys, tested)
    other = tmp_path / "other.npz"
    np.savez(other, R=harmonic_frames(600, 5), z=np.array([8, 6, 1, 1, 1]), dt_fs=0.5)
    sources = json.dumps([{"path": str(other)}])
    message = error_of(capsys, roll(trained, tmp_path / "pred.xyz", "--data.sources", sources))
    assert "other.npz: its atoms (CH3O, z = [8, 6, 1, 1, 1]) are not those of any molecule" in message
    assert "C2H6O" in message


def test_a_checkpoint_with_nan_weights_is_refused_and_nothing_written(trained, tmp_path, capsys):
    checkpoint = torch.load(trained.ckpt, weights_only=False)
    name = next(key for key, value in checkpoint["state_dict"].items() if value.is_floating_point())
    checkpoint["state_dict"][name] = torch.full_like(checkpoint["state_dict"][name], float("nan"))
    broken = tmp_path / "diverged.ckpt"
    torch.save(checkpoint, broken)
    message = error_of(capsys, roll(trained, tmp_path / "pred.xyz", ckpt=broken))
    assert "diverged.ckpt: 1 weight tensor(s) hold NaN or infinity" in message and name in message
    assert not (tmp_path / "pred.xyz").exists()


def test_a_layout_with_irregular_spacing_cannot_be_rolled_out(trained, tmp_path, capsys):
    # the GMN preset forecasts frame +3000 from frames 0 and 1: a forecast cannot become history
    args = [
        "--config",
        str(EXPERIMENTS / "base.yaml"),
        "--config",
        str(EXPERIMENTS / "models/last_frame.yaml"),
        "--data.sources",
        json.dumps([{"path": str(trained.root / "toy.npz")}]),
        "--data.protocol",
        "gmn",
        "--data.cache_dir",
        str(trained.root / "cache"),
        *[arg for key in ("history", "horizon", "spacing") for arg in (f"--data.{key}", "null")],
    ]  # the preset's
    checkpoint = tmp_path / "last_frame.ckpt"
    torch.save({"state_dict": from_config(args).model.state_dict()}, checkpoint)
    out = tmp_path / "out" / "pred.npz"
    code = main(["rollout", *args, "--ckpt_path", str(checkpoint), "--out", str(out), "--no-progress"])
    assert "cannot roll out this window layout" in error_of(capsys, code)
    assert not out.parent.exists()


def test_report_writes_its_folder_and_tensorboard(trained, tmp_path, monkeypatch):
    pytest.importorskip("asteroid.analysis")
    monkeypatch.chdir(tmp_path)
    assert roll(trained, tmp_path / "pred.xyz", "--batch", "2", "--report") == 0
    report = json.loads((tmp_path / "pred_xyz_report" / "report.json").read_text())
    assert report["predicted"] == {
        "trajectories": 2,
        "frames": FRAMES,
        "dt_fs": DT_FS,
        "duration_fs": FRAMES * DT_FS,
        "nonfinite_frames": 0,
    }
    assert report["reference"]["frames"] == len(trained.coordinates) and report["reference"]["dt_fs"] == 0.5
    assert report["coordinate_error"] is not None  # the test windows' true continuation was passed on
    assert list((tmp_path / "pred_xyz_report").glob("*.png"))
    assert roll(trained, tmp_path / "pred.pdb", "--report") == 0  # same stem, another format: its own report
    assert (tmp_path / "pred_pdb_report" / "report.json").is_file() and (tmp_path / "pred_xyz_report").is_dir()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs" / "tiny" / "rollout" / "pred.pdb")).Reload()
    assert {"analysis/first_unphysical_frame", "analysis/jsd_max/bond_length"} <= set(events.Tags()["scalars"])
    assert list((tmp_path / "runs" / "tiny" / "rollout").rglob("events.out.tfevents.*"))


def test_benchmark_times_the_shipped_rollout_of_each_checkpoint_and_records_its_settings(trained, tmp_path):
    """`asteroid benchmark --more-checkpoints`: one row per trained checkpoint, each timing the rollout `asteroid
    rollout` runs by default (bond lengths imposed, draws, thermostat) and saying so in the row."""
    out = tmp_path / "bench.json"
    options = ["--batch", "2", "--forecasts", "1", "--md-steps", "2", "--md-warmup", "1", "--repeats", "1"]
    ckpt = str(trained.ckpt)
    assert main(["benchmark", "--ckpt_path", ckpt, "--more-checkpoints", ckpt, *options, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and all(row["weights"] == ckpt for row in rows)
    for row in rows:
        assert row["bond_constraints"] is True and row["stochastic"] is True and row["thermostat"] == 4.0
        assert row["starts"] == "test windows"  # its data are here: rolled out from real histories
        assert row["forecast_ms"]["projection"] > 0 and row["batched_forecast_ms"]["network"] > 0


def test_report_judges_against_a_longer_reference_when_given_one(trained, tmp_path, monkeypatch, capsys):
    """--reference: another run of the same molecule (here the data at every other frame, 1 fs apart) replaces the
    start's own source in the report; another molecule, or --reference without --report, is a one-line error."""
    pytest.importorskip("asteroid.analysis")
    monkeypatch.chdir(tmp_path)
    longer = tmp_path / "longer.npz"
    np.savez(longer, R=trained.coordinates[::2], z=np.asarray(ETHANOL_Z), dt_fs=1.0)
    assert roll(trained, tmp_path / "pred.npz", "--report", "--reference", str(longer)) == 0
    report = json.loads((tmp_path / "pred_npz_report" / "report.json").read_text())
    assert report["reference"]["dt_fs"] == 1.0 and report["reference"]["frames"] == len(trained.coordinates[::2])
    assert report["rollout_options"]["reference"] == str(longer)
    capsys.readouterr()
    assert "add --report" in error_of(capsys, roll(trained, tmp_path / "b.npz", "--reference", str(longer)))
    other = tmp_path / "other.npz"
    np.savez(other, R=trained.coordinates[:, :4], z=np.asarray(ETHANOL_Z[:4]), dt_fs=0.5)
    message = error_of(capsys, roll(trained, tmp_path / "c.npz", "--report", "--reference", str(other)))
    assert "other.npz" in message and "same molecule" in message
    assert not (tmp_path / "b.npz").exists() and not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize("suffix", [".xyz", ".pdb", ".dcd", ".xtc", ".h5"])
def test_analyze_reads_every_rollout_format_without_flags(trained, tmp_path, suffix):
    out = tmp_path / f"pred{suffix}"
    assert roll(trained, out, "--no-progress") == 0
    report_dir = tmp_path / "report"
    assert main(["analyze", str(out), "--reference", str(trained.root / "toy.npz"), "--out", str(report_dir)]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert report["predicted"]["frames"] == FRAMES and report["predicted"]["dt_fs"] == pytest.approx(DT_FS, rel=1e-4)


def test_no_command_writes_over_a_file_it_reads(trained, reference, tmp_path, capsys):
    """rollout --out naming its data, --init or --reference file; analyze's output folder a file; simulate's --out
    naming its structure: refused in one line before any work, the file byte-identical afterwards."""
    data = trained.root / "toy.npz"
    init = write_init(tmp_path / "init.xyz", trained.coordinates[:5], reference["z"])
    reference_file = tmp_path / "ref.xyz"
    ase.io.write(reference_file, [Atoms(numbers=reference["z"], positions=r) for r in trained.coordinates[:300]])
    structure = tmp_path / "water.xyz"
    ase.io.write(structure, Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]))
    before = {path: path.read_bytes() for path in (data, init, reference_file, structure)}
    cases = [
        (lambda: roll(trained, data), "is the training data file this command reads"),
        (lambda: roll(trained, init, "--init", str(init)), "is the --init file this command reads"),
        (lambda: roll(trained, reference_file, "--report", "--reference", str(reference_file)), "is the --reference"),
        (lambda: main(["simulate", "--structure", str(structure), "--out", str(structure)]), "is the --structure"),
        (lambda: main(["analyze", str(trained.root / "reference" / "pred.npz"), "--reference", str(data),
                       "--tensorboard", str(structure)]), f"{structure}: is a file; give a folder"),
    ]  # fmt: skip
    for run, problem in cases:
        assert problem in error_of(capsys, run())
    for path, content in before.items():
        assert path.read_bytes() == content


def test_a_checkpoint_on_its_molecule_at_another_frame_step_is_refused_and_on_another_run_noted(
    trained, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(trained.root)
    z = ase.io.read(structure_path("ethanol")).numbers
    other_step, other_run = tmp_path / "other_step.npz", tmp_path / "other_run.npz"
    np.savez(other_step, R=trained.coordinates, z=z, dt_fs=0.25)
    np.savez(other_run, R=trained.coordinates[::-1].copy(), z=z, dt_fs=0.5)
    sources = json.dumps([{"path": str(other_step)}])
    tested = main(["test", *trained.args, "--ckpt_path", str(trained.ckpt), "--data.sources", sources])
    message = error_of(capsys, tested)
    assert "other_step.npz: frames 0.25 fs apart, but" in message and "was trained on frames 0.5 fs apart" in message
    sources = json.dumps([{"path": str(other_run)}])
    assert main(["test", *trained.args, "--ckpt_path", str(trained.ckpt), "--data.sources", sources]) == 0
    assert f"note: {other_run} is not the trajectory" in capsys.readouterr().err


def test_a_rollout_too_large_for_the_disk_or_memory_is_refused_up_front_with_the_estimate(
    trained, tmp_path, capsys, monkeypatch
):
    code = roll(trained, tmp_path / "huge.npz", "--samples", "100000", "--frames", "1000000")
    message = error_of(capsys, code)
    assert "100000 trajectories (1 start(s) x --samples 100000) x --frames 1000000 of 9 atoms need about" in message
    assert "TB of disk while written" in message and not (tmp_path / "huge.npz").exists()
    monkeypatch.setattr("asteroid.commands.rollout.available_memory", lambda: 10**8)
    message = error_of(capsys, roll(trained, tmp_path / "long.pdb", "--frames", "1000000"))
    assert "--frames 1000000 of 9 atoms need about 3.24 GB of memory per trajectory while written" in message


def test_many_trajectories_are_rolled_out_in_chunks_that_give_the_same_frames(trained, tmp_path, monkeypatch):
    """The network's memory grows with the trajectories rolled out at once: they go in chunks of CHUNK."""
    assert roll(trained, tmp_path / "whole.npz", "--batch", "3", "--frames", "12", "--mean") == 0
    monkeypatch.setattr("asteroid.commands.rollout.CHUNK", 2)
    assert roll(trained, tmp_path / "chunks.npz", "--batch", "3", "--frames", "12", "--mean") == 0
    whole, chunks = np.load(tmp_path / "whole.npz")["R"], np.load(tmp_path / "chunks.npz")["R"]
    assert whole.shape == (3, 12, 9, 3)
    np.testing.assert_allclose(chunks, whole, atol=1e-5)


def test_a_mistyped_option_is_one_line_with_the_option_meant(trained, tmp_path, capsys):
    """Not the 63 lines of fit's usage that jsonargparse prints (issue 30)."""
    message = error_of(capsys, roll(trained, tmp_path / "a.xyz", "--frame", "3"))
    assert message == "asteroid: error: --frame: unknown option; did you mean --frames? (--help lists them)"
    message = error_of(capsys, roll(trained, tmp_path / "a.xyz", "--data.spacng", "3"))
    assert "--data.spacng: unknown option; did you mean --data.spacing?" in message


def test_a_stochastic_constrained_model_trains_reports_its_calibration_and_rolls_out_ensembles(
    tmp_path, monkeypatch, capsys
):
    structure = ase.io.read(structure_path("ethanol"))
    vibration = harmonic_frames(600, len(structure))
    coordinates = (structure.positions + 0.5 * (vibration - vibration.mean(axis=0))).astype(np.float32)
    np.savez(tmp_path / "toy.npz", R=coordinates, z=structure.numbers, dt_fs=0.5)
    args = tiny_args(
        tmp_path, **{"--trainer.max_epochs": "1", "--model.bond_constraints": "true", "--model.stochastic": "true"}
    )
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *args]) == 0
    printed = capsys.readouterr().out
    assert "spread-skill ratio per step" in printed
    calibration = next(tmp_path.glob("runs/tiny/**/spread_skill.csv")).read_text().splitlines()
    assert calibration[0] == "step,spread,rmse,ratio" and len(calibration) == 3  # horizon 2
    ckpt = next(tmp_path.glob("runs/tiny/**/last.ckpt"))
    stored = torch.load(ckpt, weights_only=False)["state_dict"]
    assert stored["net.noise.step_energy"] > 0 and len(stored["net.bonded.pairs"]) > 0

    def roll(out, *extra):
        return main(
            ["rollout", *args, "--ckpt_path", str(ckpt), "--out", str(out), "--frames", "40", "--no-progress", *extra]
        )

    assert roll(tmp_path / "a.npz", "--samples", "3", "--thermostat", "1") == 0
    assert roll(tmp_path / "b.npz", "--samples", "3", "--thermostat", "1") == 0
    assert "thermostat_coupling_forecasts 1.0" in capsys.readouterr().out
    a, b = np.load(tmp_path / "a.npz")["R"], np.load(tmp_path / "b.npz")["R"]
    assert a.shape == (3, 40, 9, 3) and np.array_equal(a, b)  # one seed, one ensemble
    assert np.abs(a[0] - a[1]).mean() > 1e-3  # the members differ
    assert roll(tmp_path / "mean.npz", "--samples", "2", "--mean", "--thermostat", "0") == 2
    assert "every sample would be the same trajectory" in capsys.readouterr().err


def test_a_rollout_reads_its_checkpoint_once(trained, tmp_path, monkeypatch):
    """Its config, weights and data record come from one read (issue 29: the file was read three times)."""
    import asteroid.checkpoints

    reads = []
    load = asteroid.checkpoints.torch.load
    monkeypatch.setattr(asteroid.checkpoints.torch, "load", lambda path, **kw: reads.append(path) or load(path, **kw))
    asteroid.checkpoints._read_checkpoint.cache_clear()
    monkeypatch.chdir(tmp_path)
    assert roll(trained, tmp_path / "once.xyz") == 0
    assert reads == [str(trained.ckpt.resolve())]
