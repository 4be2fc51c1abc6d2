"""A cell on two processes (gloo, CPU) computes what it computes on one: the same batches, the
same noise, the same epsilon and final weights equal to float tolerance."""

from __future__ import annotations

import pytest
import torch

from bench import saved_model
from bench.errors import ConfigError
from bench.sweep.processes import RankLost, check_nproc, train_cell_on
from bench.train.cell import train_cell
from bench.train.ranks import Ranks
from tests.resume_tools import cell

CPU = torch.device("cpu")

#: A covering design: every grad-sample mode once, with DP statistics, gradient dropping,
#: augmentation multiplicity and odd logical batches spread over the three.
CASES = {
    "hooks-augmult": ["training.grad_sample_mode=hooks", "training.augmult=2"],
    "functorch-layer_norm": ["training.grad_sample_mode=functorch", "grid.norm=[layer_norm]"],
    "bk-private_stats-grad_drop": [
        "training.grad_sample_mode=bk",
        "grid.norm=['dp_batch_norm[stats=private_dp]']",
        "training.grad_drop={rate: 0.5, method: random}",
        "training.max_loss=1e30",  # private statistics of 224 examples are noisy: a large first loss
    ],
}


def _weights(model_dir, run_key: str) -> dict[str, torch.Tensor]:
    path = saved_model.model_path(model_dir, run_key)
    return saved_model.load(path, run_key)["weights"]["final"]


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_two_processes_train_what_one_does(tmp_path, case):
    c = cell(tmp_path, "training.save_model=true", "training.steps=3", *CASES[case])
    one = train_cell(c, CPU, model_dir=tmp_path / "one")
    two = train_cell_on(2, c, CPU, model_dir=tmp_path / "two")
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert len(two["throughput_per_rank_img_s"]) == 2
    for field in ("epsilon_spent", "steps_done", "noise_multiplier", "sample_rate"):
        assert two[field] == one[field], field
    w1, w2 = _weights(tmp_path / "one", c.run_key), _weights(tmp_path / "two", c.run_key)
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-6, msg=name)
    assert two["test_acc"] == pytest.approx(one["test_acc"], abs=2 / one["n_test"])


def test_a_shard_is_contiguous_and_covers_the_batch_once():
    for n in (0, 1, 5, 64):
        for world in (1, 2, 3):
            parts = [Ranks(r, world).shard(n) for r in range(world)]
            covered = [i for p in parts for i in range(n)[p]]
            assert covered == list(range(n))
            sizes = [len(range(n)[p]) for p in parts]
            assert max(sizes) - min(sizes) <= 1


def test_an_error_every_rank_raises_comes_back_as_itself(tmp_path):
    c = cell(tmp_path, "training.max_loss=1e-9")  # the first step's loss is above it
    with pytest.raises(Exception) as raised:
        train_cell_on(2, c, CPU)
    assert type(raised.value).__name__ == "Diverged"
    assert not isinstance(raised.value, RankLost)


def test_more_processes_than_devices_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="--nproc 4096: only"):
        check_nproc(4096, CPU)
    with pytest.raises(ConfigError, match="at least 1"):
        check_nproc(0, CPU)
