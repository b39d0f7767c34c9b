"""Data-parallel training: two gloo ranks on CPU stay bit-identical through split-and-prune decisions."""
import json
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from ddn.training.train_state import LAST, read_run_checkpoint
from train_helpers import distributed_worker, tiny


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(config, out_dir, result_dir, resume=False, max_seconds=None) -> list[dict[str, torch.Tensor]]:
    result_dir.mkdir(exist_ok=True)
    mp.start_processes(distributed_worker, args=(2, free_port(), config, out_dir, result_dir, resume, max_seconds),
                       nprocs=2, join=True, start_method="spawn")
    return [load_file(str(result_dir / f"rank{r}.safetensors")) for r in range(2)]


def test_two_gloo_ranks_stay_identical_through_splits(tmp_path):
    config = tiny(steps=12, batch=32, checkpoint_every=6)
    rank0, rank1 = run_two_ranks(config, tmp_path / "run", tmp_path / "ranks")
    assert int(rank0["splits"]) > 0 and int(rank0["splits"]) == int(rank1["splits"])
    different = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert not different, different[:5]
    # The statistics each decision used were global: every rank saw batch/2 images per step.
    counts = [v for k, v in rank0.items() if k.endswith("usage.count")]
    assert all(float(c.sum()) == pytest.approx(12 * 32) for c in counts)

    # Only rank 0 wrote, and its checkpoint carries both ranks' RNG streams.
    state = read_run_checkpoint(tmp_path / "run" / LAST)
    assert state.train["world_size"] == 2 and len(state.rng["dropout"]) == 2
    assert not torch.equal(state.rng["data"][0], state.rng["data"][1])  # each rank has its own shard order
    assert torch.equal(state.model.state_dict()["layers.0.weight"], rank0["model/layers.0.weight"])


def test_two_ranks_share_the_time_budget_and_its_learning_rate(tmp_path):
    """Each rank's clock differs; rank agreement on the time share keeps the LR, the stop and the weights equal."""
    config = tiny(steps=10**6, batch=32, lr=1e-3, lr_decay=1.0, log_every=1)
    rank0, rank1 = run_two_ranks(config, tmp_path / "run", tmp_path / "ranks", max_seconds=3.0)
    assert int(rank0["step"]) == int(rank1["step"]) > 10
    assert not [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert lrs[0] > 0.5e-3 and lrs[-1] < 0.2e-3


@pytest.mark.slow
def test_two_rank_run_resumes_to_the_same_bits(tmp_path):
    # The run is stopped by a shorter --steps and extended, so the LR stays constant (a decay would stretch).
    config = tiny(steps=12, batch=32, checkpoint_every=6, lr_decay=0.0)
    rank0, _ = run_two_ranks(config, tmp_path / "run", tmp_path / "ranks")
    split_run = tmp_path / "split"
    run_two_ranks(tiny(steps=6, batch=32, checkpoint_every=6, lr_decay=0.0), split_run, tmp_path / "first")
    resumed0, resumed1 = run_two_ranks(config, split_run, tmp_path / "resumed", resume=True)
    for resumed in (resumed0, resumed1):
        assert not [k for k in rank0 if not torch.equal(rank0[k], resumed[k])]
