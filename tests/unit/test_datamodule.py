import numpy as np
import pytest
import torch

from asteroid.data.datamodule import TrajectoryDataModule
from asteroid.data.dataset import collate_windows
from asteroid.data.signature import split_summary
from asteroid.data.sources import TrajectorySource
from asteroid.data.windows import SPLITS, count_windows, peer_random_starts
from asteroid.errors import ConfigError, DataError

from helpers import write_toy_trajectory


def write_npz(path, n_frames=800, z=(6, 1, 8, 1), seed=0):
    return write_toy_trajectory(path, n_frames, z, seed)


def make_module(tmp_path, sources, **kwargs):
    kwargs = {"history": 3, "horizon": 2, "spacing": 4, "batch_size": 8, "cache_dir": str(tmp_path / "cache"), **kwargs}
    dm = TrajectoryDataModule(sources=sources, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_windows_are_views_of_the_trajectory(tmp_path):
    R = write_npz(tmp_path / "a.npz")
    dm = make_module(tmp_path, [TrajectorySource(str(tmp_path / "a.npz"))])
    span = dm.layout.span
    assert span == (3 + 2 - 1) * 4 + 1
    counts = [len(dm.datasets[s]) for s in SPLITS]
    lengths = [int((800 - 2 * span) * f) for f in (0.8, 0.1, 0.1)]
    assert counts == [count_windows(n, span, 1) for n in lengths]
    sample = dm.datasets["val"][5]
    start = dm.datasets["val"].index[5, 1]
    np.testing.assert_array_equal(sample["history"].numpy(), R[start + np.array([0, 4, 8])])
    np.testing.assert_array_equal(sample["target"].numpy(), R[start + np.array([12, 16])])
    assert sample["z"].tolist() == [6, 1, 8, 1] and sample["mask"].all()
    cache = np.load(dm.datasets["train"].coordinate_files[0], mmap_mode="r")
    assert isinstance(cache, np.memmap) and cache.dtype == np.float32


@pytest.mark.parametrize("spoil", ["cut", "zeroed", "missing", "record cut"])
def test_a_spoiled_cache_is_rebuilt_with_one_line_saying_so(tmp_path, capsys, spoil):
    R = write_npz(tmp_path / "a.npz")
    source = TrajectorySource(str(tmp_path / "a.npz"))
    dm = make_module(tmp_path, [source])
    cache = dm.datasets["train"].coordinate_files[0]
    capsys.readouterr()
    size = cache.stat().st_size
    if spoil == "cut":
        cache.write_bytes(cache.read_bytes()[: size * 6 // 10])
    elif spoil == "zeroed":  # same size, same header: only the checksum tells
        header = len(cache.read_bytes()) - R.size * 4
        cache.write_bytes(cache.read_bytes()[:header] + bytes(size - header))
    elif spoil == "missing":
        cache.unlink()
    else:  # a crash while its record was written (or an edit): half a JSON object
        record = cache.with_suffix(".json")
        record.write_text(record.read_text()[:20])
    again = make_module(tmp_path, [source])
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and said[0].startswith(str(cache)) and "rebuilding it from" in said[0]
    np.testing.assert_array_equal(np.load(cache), R.astype(np.float32))
    assert again.datasets["val"][3]["history"].abs().sum() > 0
    make_module(tmp_path, [source])
    assert capsys.readouterr().out == ""  # a whole cache is used as it is


def test_displacement_scale_uses_the_training_block_only(tmp_path):
    R = write_npz(tmp_path / "a.npz")
    dm = make_module(tmp_path, [TrajectorySource(str(tmp_path / "a.npz"))])
    # corrupt everything after the training block: the scale must not move
    R2 = R.copy()
    last_train_frame = dm.datasets["train"].index[-1, 1] + dm.layout.span
    R2[last_train_frame:] += np.random.default_rng(1).normal(size=R2[last_train_frame:].shape) * 10
    np.savez(tmp_path / "b.npz", R=R2, z=np.array([6, 1, 8, 1]), dt_fs=0.5)
    dm2 = make_module(tmp_path, [TrajectorySource(str(tmp_path / "b.npz"))])
    torch.testing.assert_close(dm.displacement_scale, dm2.displacement_scale)
    assert dm.displacement_scale.shape == (2,) and (dm.displacement_scale > 0).all()
    # and it is the RMS displacement from the last history frame, per component
    train = dm.datasets["train"]
    disp = np.stack([(train[i]["target"] - train[i]["history"][-1]).numpy() for i in range(len(train))])
    np.testing.assert_allclose(dm.displacement_scale.numpy(), np.sqrt((disp**2).mean(axis=(0, 2, 3))), rtol=1e-4)


def test_several_molecules_are_padded_with_a_mask(tmp_path):
    write_npz(tmp_path / "a.npz", z=(6, 1, 8, 1))
    write_npz(tmp_path / "b.npz", z=(7, 7), seed=1)
    dm = make_module(tmp_path, [TrajectorySource(str(tmp_path / "a.npz")), TrajectorySource(str(tmp_path / "b.npz"))])
    ds = dm.datasets["train"]
    first_b = int(np.argmax(ds.index[:, 0] == 1))
    batch = collate_windows([ds[0], ds[first_b]])
    assert batch["history"].shape == (2, 3, 4, 3) and batch["target"].shape == (2, 2, 4, 3)
    assert batch["mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert batch["z"][1].tolist() == [7, 7, 0, 0]
    assert (batch["history"][1, :, 2:] == 0).all()


def test_heavy_atoms_only(tmp_path):
    write_npz(tmp_path / "a.npz")
    dm = make_module(tmp_path, [TrajectorySource(str(tmp_path / "a.npz"))], heavy_atoms=True)
    assert dm.datasets["train"][0]["z"].tolist() == [6, 8]


def test_split_summary_records_the_split(tmp_path):
    write_npz(tmp_path / "a.npz")
    dm = make_module(tmp_path, [TrajectorySource(str(tmp_path / "a.npz"))])
    summary = split_summary(dm)
    assert summary["protocol"] == "default" and summary["target_offsets"] == [12, 16]
    traj = summary["trajectories"][0]
    assert traj["train"]["last_start"] + dm.layout.span <= traj["val"]["first_start"]
    assert traj["n_frames"] == 800 and traj["dt_fs"] == 0.5


def test_protocol_fixes_the_layout(tmp_path):
    with pytest.raises(ConfigError, match="protocol 'gmn' fixes the window layout"):
        TrajectoryDataModule(sources=[TrajectorySource("x.npz")], protocol="gmn", history=4)
    with pytest.raises(ConfigError, match="unknown protocol 'nope'"):
        TrajectoryDataModule(sources=[TrajectorySource("x.npz")], protocol="nope")


def test_missing_file_without_molecule(tmp_path):
    dm = TrajectoryDataModule(sources=[TrajectorySource(str(tmp_path / "missing.npz"))])
    with pytest.raises(DataError, match=r"missing.npz: file not found"):
        dm.prepare_data()


def test_too_short_for_the_split(tmp_path):
    write_npz(tmp_path / "short.npz", n_frames=60)
    with pytest.raises(DataError, match=r"short.npz: trajectory too short"):
        make_module(tmp_path, [TrajectorySource(str(tmp_path / "short.npz"))])


def frame_index_trajectory(path, n_frames, z=(6, 1, 8, 1)):
    """Atom a of frame t sits at (t / 8, a, 0): a window's coordinates say which frames and atoms it holds (eighths
    are exact in float32 and keep 40,000 frames within the coordinate range a trajectory may span)."""
    R = np.zeros((n_frames, len(z), 3), dtype=np.float32)
    R[:, :, 0] = np.arange(n_frames)[:, None] / 8
    R[:, :, 1] = np.arange(len(z))[None, :]
    np.savez(path, R=R, z=np.asarray(z), dt_fs=0.5)


def window_frames(dataset, i):
    """(history frames, target frames, atoms kept) of window i, read back from its coordinates."""
    window = dataset[i]

    def frames(coordinates):
        return (8 * coordinates[:, 0, 0]).round().long().tolist()

    return frames(window["history"]), frames(window["target"]), window["history"][0, :, 1].long().tolist()


@pytest.mark.parametrize("protocol", ["gmn", "egno", "estag", "eqmotion"])
def test_peer_presets_give_the_official_loaders_windows(tmp_path, protocol):
    """Each window's frames and atoms as the official loaders index them, on a 20,401-frame trajectory (x[:-1]
    then x[10000:-10000] leaves 400 starts: 40 train, 20 val and 20 test are drawn)."""
    frame_index_trajectory(tmp_path / "t.npz", 20401)
    dm = make_module(
        tmp_path,
        [TrajectorySource(str(tmp_path / "t.npz"))],
        protocol=protocol,
        history=None,
        horizon=None,
        spacing=None,
        seed=7,
    )
    counts = {"eqmotion": [int((12750 - 400) / 20), int((2550 - 400) / 20), int((5100 - 400) / 20)]}
    assert [len(dm.datasets[k]) for k in SPLITS] == counts.get(protocol, [40, 20, 20])
    for split in SPLITS:
        for i in range(len(dm.datasets[split])):
            st = int(dm.datasets[split].index[i, 1])
            history, target, atoms = window_frames(dm.datasets[split], i)
            assert atoms == [0, 2]  # heavy atoms only: z > 1
            if protocol == "estag":  # x_0 = x[[k + i * delta_frame for i in range(num_past)]], x_t = x[st + 100]
                assert (history, target) == ([st + 10 * k for k in range(10)], [st + 100])
            elif protocol == "egno":  # x_0 = x[st], v_0 = x[st + 1] - x[st], x_t = x[st + 3000 * i // 8]
                assert (history, target) == ([st, st + 1], [st + 3000 * k // 8 for k in range(1, 9)])
            elif protocol == "gmn":  # x_0, v_0 as EGNO, x_t = x[st + delta_frame]
                assert (history, target) == ([st, st + 1], [st + 3000])
            else:  # traj = x_period[20 j: 20 j + 400: 20], 10 frames in and 10 out
                assert history + target == list(range(st, st + 400, 20))
    assert split_summary(dm)["split_seed"] == (7 if protocol == "eqmotion" else 100)
    if protocol != "eqmotion":  # the peers' fixed seed 100, not data.seed
        np.testing.assert_array_equal(
            dm.datasets["test"].index[:, 1],
            peer_random_starts(20401, dm.layout.span, (0.1, 0.05, 0.05), (500, 2000, 2000))["test"],
        )


def test_a_preset_refuses_a_window_stride(tmp_path):
    with pytest.raises(ConfigError, match=r"'eqmotion' fixes the window layout; remove stride \(data.stride\)"):
        TrajectoryDataModule(sources=[TrajectorySource("x.npz")], protocol="eqmotion", stride=5)


def test_the_data_say_their_frame_step_spacing_and_window_counts(tmp_path):
    write_npz(tmp_path / "a.npz")  # 0.5 fs apart
    dm = make_module(tmp_path, [TrajectorySource(str(tmp_path / "a.npz"))], spacing=10)
    counts = " / ".join(f"{len(dm.datasets[name])} {name}" for name in SPLITS)
    assert dm.describe().splitlines() == [
        f"data: {tmp_path / 'a.npz'}: 800 frames of 4 atoms (CH2O), 0.5 fs apart",
        f"windows: 3 frames in, 2 out, 10 data frames apart (data.spacing; 5 fs); {counts}",
    ]
    coarse = make_module(tmp_path, [TrajectorySource(str(tmp_path / "a.npz"), dt_fs=5.0)], spacing=10)
    assert coarse.describe().splitlines()[-1].startswith("note: the model's frames are 50 fs apart")
