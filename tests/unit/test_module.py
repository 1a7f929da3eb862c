"""ForecastModule pieces that are not the network: the training-history noise, loading weights."""

import pytest
import torch

from asteroid.checkpoints import load_state
from asteroid.errors import ConfigError
from asteroid.models import LastFrame
from asteroid.training.augment import random_walk_noise
from asteroid.training.module import ForecastModule


def test_random_walk_noise_grows_along_the_history_and_reaches_its_std_on_the_last_frame():
    torch.manual_seed(0)
    history = torch.zeros(4000, 8, 5, 3)
    noise = random_walk_noise(history, 0.03)  # (B, H, N, 3)
    assert noise.shape == history.shape
    std = noise.std(dim=(0, 2, 3))  # (H,)
    torch.testing.assert_close(std, 0.03 * torch.sqrt(torch.arange(1, 9) / 8.0), rtol=0.03, atol=0.0)
    steps = noise.diff(dim=1).flatten(2)  # independent increments: uncorrelated from frame to frame
    assert abs(torch.corrcoef(torch.stack([steps[:, 0].flatten(), steps[:, 1].flatten()]))[0, 1]) < 0.02


def test_negative_history_noise_is_refused():
    with pytest.raises(ConfigError, match="history_noise"):
        ForecastModule(LastFrame(history=2, horizon=2), history_noise=-0.1)


def test_a_checkpoint_with_the_older_uncorrelated_heads_is_refused_in_one_line():
    module = ForecastModule(LastFrame(history=3, horizon=4), stochastic=True)
    state = module.state_dict()
    assert state["net.noise.mlp.4.bias"].shape == (4 * 5 // 2,)  # the entries of a 4-step factor
    older = {**state, "net.noise.mlp.4.weight": torch.zeros(4, 32), "net.noise.mlp.4.bias": torch.zeros(4)}
    with pytest.raises(ConfigError, match=r"^old\.ckpt: made by an older version, whose sampled residuals were"):
        load_state(ForecastModule(LastFrame(history=3, horizon=4), stochastic=True), older, "old.ckpt")
    other = {key: value for key, value in state.items() if key != "net.noise.step_energy"}
    with pytest.raises(ConfigError, match=r"old\.ckpt: its weights do not fit the config's model \(Missing key"):
        load_state(module, other, "old.ckpt")


def test_a_fine_tune_may_add_the_bond_head_its_weights_lack_and_nothing_else():
    """A model for many molecules has no bond-length head; a fine-tune with model.bond_constraints starts one new."""
    without = ForecastModule(LastFrame(history=3, horizon=4), stochastic=True).state_dict()
    module = ForecastModule(LastFrame(history=3, horizon=4), stochastic=True, bond_constraints=True)
    head = {key: value.clone() for key, value in module.state_dict().items() if key.startswith("net.bonded.")}
    assert head and not any(key.startswith("net.bonded.") for key in without)
    with pytest.raises(ConfigError, match=r"^tuned\.ckpt: its weights do not fit the config's model \(Missing key"):
        load_state(module, without, "tuned.ckpt")  # a missing head is not an older version's
    assert load_state(module, without, "tuned.ckpt", fresh=("net.bonded.",)) == ["net.bonded."]
    for key, value in head.items():
        torch.testing.assert_close(module.state_dict()[key], value)
    other = {key: value for key, value in without.items() if key != "net.noise.step_energy"}
    with pytest.raises(ConfigError, match=r"Missing key"):
        load_state(module, other, "tuned.ckpt", fresh=("net.bonded.",))
