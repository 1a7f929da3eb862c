import numpy as np
import pytest

from asteroid.data.windows import (
    PROTOCOLS,
    SPLITS,
    WindowLayout,
    chronological_starts,
    count_windows,
    eqmotion_blocks,
    peer_random_starts,
)
from asteroid.errors import ConfigError, DataError


@pytest.mark.parametrize("n_frames,span,stride", [(100, 10, 1), (100, 10, 3), (10, 10, 1), (9, 10, 1), (57, 5, 7)])
def test_count_windows_matches_enumeration(n_frames, span, stride):
    brute = sum(1 for s in range(0, n_frames, stride) if s + span <= n_frames)
    assert count_windows(n_frames, span, stride) == brute


def test_regular_layout_offsets():
    layout = WindowLayout.regular(history=3, horizon=2, spacing=5)
    assert layout.history_offsets == (0, 5, 10)
    assert layout.target_offsets == (15, 20)
    assert layout.span == 21
    assert list(layout.lead_frames()) == [5, 10]


def test_regular_layout_rejects_zero():
    with pytest.raises(ConfigError, match="must be >= 1"):
        WindowLayout.regular(0, 2, 1)


def frames_of(starts, layout):
    offsets = np.asarray(layout.history_offsets + layout.target_offsets)
    return set((np.asarray(starts)[:, None] + offsets).ravel().tolist())


@pytest.mark.parametrize("stride", [1, 4])
def test_chronological_splits_share_no_frame_and_keep_a_gap(stride):
    layout = WindowLayout.regular(4, 3, 5)
    starts = chronological_starts(2000, layout.span, stride, (0.8, 0.1, 0.1), gap=layout.span)
    used = {name: frames_of(starts[name], layout) for name in SPLITS}
    assert all(len(starts[name]) > 0 for name in SPLITS)
    for a in SPLITS:
        for b in SPLITS:
            if a != b:
                assert not used[a] & used[b], f"{a} and {b} share frames"
    # chronological order with at least one window between blocks
    assert min(used["val"]) - max(used["train"]) > layout.span
    assert min(used["test"]) - max(used["val"]) > layout.span
    assert max(used["test"]) < 2000
    assert np.all(np.diff(starts["train"]) == stride)


def test_chronological_split_too_short_names_the_file():
    with pytest.raises(DataError, match=r"short.npz: trajectory too short: 50 frames"):
        chronological_starts(50, 20, 1, (0.8, 0.1, 0.1), gap=20, source="short.npz")


def official_peer_split(n_frames, max_samples):
    """The split code of the GMN, EGNO and ESTAG MD17 loaders (md17/dataset.py), transcribed line by line."""
    state = np.random.get_state()
    x = np.arange(n_frames)[:-1]
    np.random.seed(100)
    _x = x[10000:-10000]
    train_idx = np.random.choice(np.arange(_x.shape[0]), size=int(0.1 * _x.shape[0]), replace=False)
    flag = np.zeros(_x.shape[0])
    for _ in train_idx:
        flag[_] = 1
    rest = [_ for _ in range(_x.shape[0]) if not flag[_]]
    val_idx = np.random.choice(rest, size=int(0.05 * _x.shape[0]), replace=False)
    for _ in val_idx:
        flag[_] = 1
    rest = [_ for _ in range(_x.shape[0]) if not flag[_]]
    test_idx = np.random.choice(rest, size=int(0.05 * _x.shape[0]), replace=False)
    np.random.set_state(state)
    split = (train_idx + 10000, val_idx + 10000, test_idx + 10000)
    return {name: np.sort(st[:limit]) for name, st, limit in zip(SPLITS, split, max_samples)}


@pytest.mark.parametrize(
    "n_frames,limits", [(20401, (500, 2000, 2000)), (21001, (7, 3, 5)), (40000, (500, 2000, 2000))]
)
def test_peer_random_starts_are_the_official_loaders_starts(n_frames, limits):
    ours = peer_random_starts(n_frames, 3001, (0.1, 0.05, 0.05), limits)
    official = official_peer_split(n_frames, limits)
    for name in SPLITS:
        np.testing.assert_array_equal(ours[name], official[name], err_msg=name)
    if n_frames == 40000:  # 19,999 usable starts: 1999 drawn for train, of which the first 500 are kept
        assert [len(ours[k]) for k in SPLITS] == [500, 999, 999]


def test_peer_random_starts_are_disjoint_and_fit_their_windows():
    starts = peer_random_starts(21001, 3001, (0.1, 0.05, 0.05), (500, 2000, 2000))
    every = np.concatenate([starts[k] for k in SPLITS])
    assert len(set(every.tolist())) == len(every)  # disjoint
    assert every.min() >= 10000 and every.max() + 3000 <= 21001 - 2  # inside x[:-1]


def test_peer_random_starts_too_short():
    with pytest.raises(DataError, match="x.npz: trajectory too short for this protocol: 20010 frames"):
        peer_random_starts(20010, 3001, (0.1, 0.05, 0.05), (500, 2000, 2000), source="x.npz")


def test_eqmotion_blocks_are_the_official_preprocess_windows():
    """By hand from md17/preprocess.py: 6401 frames -> x[:-1] has 6400 -> blocks of 4000 / 800 / 1600 frames,
    int((4000 - 400) / 20) = 180, int(400 / 20) = 20 and int(1200 / 20) = 60 windows, 20 frames apart."""
    starts = eqmotion_blocks(6401, PROTOCOLS["eqmotion"].layout, 20, (5, 1, 2), (5000, 2000, 2000), seed=0)
    np.testing.assert_array_equal(starts["train"], np.arange(0, 3600, 20))
    np.testing.assert_array_equal(starts["val"], 4000 + np.arange(0, 400, 20))
    np.testing.assert_array_equal(starts["test"], 4800 + np.arange(0, 1200, 20))
    capped = eqmotion_blocks(6401, PROTOCOLS["eqmotion"].layout, 20, (5, 1, 2), (100, 2000, 2000), seed=0)
    assert len(capped["train"]) == 100 and set(capped["train"]) <= set(starts["train"])


def test_eqmotion_blocks_too_short():
    with pytest.raises(DataError, match="y.npz: trajectory too short for this protocol: 3201 frames give 80/0/20"):
        eqmotion_blocks(3201, PROTOCOLS["eqmotion"].layout, 20, (5, 1, 2), (5000, 2000, 2000), 0, source="y.npz")


def test_peer_presets_are_the_official_layouts():
    assert PROTOCOLS["gmn"].layout.target_offsets == (3000,)
    assert PROTOCOLS["gmn"].layout.history_offsets == (0, 1)  # x_t and v_t = x_t+1 - x_t
    assert PROTOCOLS["egno"].layout.history_offsets == (0, 1)
    assert PROTOCOLS["egno"].layout.target_offsets == tuple(3000 * i // 8 for i in range(1, 9))
    assert PROTOCOLS["estag"].layout.history_offsets == tuple(range(0, 100, 10))
    assert PROTOCOLS["estag"].layout.target_offsets == (100,)
    eq = PROTOCOLS["eqmotion"]
    assert eq.layout.history_offsets + eq.layout.target_offsets == tuple(range(0, 400, 20))
    assert all(PROTOCOLS[name].heavy_atoms for name in ("gmn", "egno", "estag", "eqmotion"))
    assert not PROTOCOLS["default"].heavy_atoms and PROTOCOLS["default"].split == "chronological"
