"""Checkpoint files are read without running code: RNG state as JSON and plain tensors, weights_only loads."""

from __future__ import annotations

import pickle
import random

import pytest
import torch

from rrhf_core.training.checkpoint import load_rng, save_rng


class Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_rng_state_round_trips(tmp_path):
    random.seed(1)
    torch.manual_seed(1)
    save_rng(tmp_path, 0)
    expected = (random.random(), torch.rand(3))
    random.seed(2)
    torch.manual_seed(2)
    load_rng(tmp_path, 0)
    assert random.random() == expected[0] and torch.equal(torch.rand(3), expected[1])


def test_a_planted_pickle_in_a_checkpoint_is_refused_not_run(tmp_path):
    save_rng(tmp_path, 0)
    marker = tmp_path / "planted-code-ran"
    (tmp_path / "rng-rank0.pt").write_bytes(pickle.dumps({"torch": Planted(marker)}))
    with pytest.raises(pickle.UnpicklingError):
        load_rng(tmp_path, 0)
    assert not marker.exists()
