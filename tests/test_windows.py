import numpy as np
import pytest

from asteroid.data.windows import (PROTOCOLS, SPLITS, WindowLayout, chronological_starts, count_windows,
                                   random_starts)
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


def test_random_starts_are_reproducible_disjoint_and_inside_margin():
    a = random_starts(30000, 3001, (50, 200, 200), margin=10000, seed=3)
    b = random_starts(30000, 3001, (50, 200, 200), margin=10000, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in SPLITS)
    assert [len(a[k]) for k in SPLITS] == [50, 200, 200]
    allstarts = np.concatenate([a[k] for k in SPLITS])
    assert len(set(allstarts.tolist())) == len(allstarts)
    assert allstarts.min() >= 10000 and allstarts.max() + 3001 <= 30000 - 10000


def test_random_starts_too_short():
    with pytest.raises(DataError, match="too short for this protocol"):
        random_starts(21000, 3001, (500, 2000, 2000), margin=10000, seed=0, source="x.npz")


def test_peer_presets_match_design():
    assert PROTOCOLS["gmn"].layout.target_offsets == (3000,)
    assert PROTOCOLS["gmn"].layout.history_offsets == (0, 1)
    assert PROTOCOLS["egno"].layout.target_offsets == tuple(375 * i for i in range(1, 9))
    assert PROTOCOLS["estag"].layout.history_offsets == tuple(range(0, 100, 10))
    assert PROTOCOLS["estag"].layout.target_offsets == (100,)
    eq = PROTOCOLS["eqmotion"]
    assert eq.layout.history == 10 and eq.layout.horizon == 10 and eq.layout.lead_frames()[0] == 20
    assert eq.split == "chronological" and np.isclose(sum(eq.fractions), 1.0)
    assert PROTOCOLS["gmn"].heavy_atoms and PROTOCOLS["egno"].heavy_atoms
    assert PROTOCOLS["default"].split == "chronological"
