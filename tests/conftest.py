"""Shared fixtures: random-weight model pairs (official package vs segany) with equal weights."""

from __future__ import annotations

import pytest
import torch

import segany
from tests.helpers import TINY, make_pair, randomize_

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="module")
def one_thread():
    """Pin torch to one thread for a module (``pytestmark = pytest.mark.usefixtures(...)``):
    tiny models gain nothing from threads, and a busy machine makes them much slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_pair():
    return make_pair(TINY)


@pytest.fixture(scope="session")
def tiny_model(tiny_pair):
    return tiny_pair[1]


@pytest.fixture(scope="session")
def vit_b_pair(tmp_path_factory):
    """Official vit_b with random weights, and segany's loaded from the same file through the
    drop-in ``sam_model_registry["vit_b"](checkpoint=...)``."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    official = randomize_(sam_model_registry["vit_b"](), 0).eval()
    path = tmp_path_factory.mktemp("vit_b") / "sam_vit_b_random.pth"
    torch.save(official.state_dict(), path)
    ours = segany.sam_model_registry["vit_b"](checkpoint=str(path))
    path.unlink()
    return official, ours
