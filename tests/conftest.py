import pytest
import torch

# Two cores here: many threads on tiny tensors are far slower than one.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
