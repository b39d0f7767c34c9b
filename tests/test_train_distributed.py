"""Data-parallel training: two gloo ranks on CPU stay bit-identical through split-and-prune decisions."""
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


def run_two_ranks(config, out_dir, result_dir, resume=False) -> list[dict[str, torch.Tensor]]:
    result_dir.mkdir(exist_ok=True)
    mp.start_processes(distributed_worker, args=(2, free_port(), config, out_dir, result_dir, resume), nprocs=2,
                       join=True, start_method="spawn")
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


@pytest.mark.slow
def test_two_rank_run_resumes_to_the_same_bits(tmp_path):
    config = tiny(steps=12, batch=32, checkpoint_every=6)
    rank0, _ = run_two_ranks(config, tmp_path / "run", tmp_path / "ranks")
    split_run = tmp_path / "split"
    run_two_ranks(tiny(steps=6, batch=32, checkpoint_every=6), split_run, tmp_path / "first")
    resumed0, resumed1 = run_two_ranks(config, split_run, tmp_path / "resumed", resume=True)
    for resumed in (resumed0, resumed1):
        assert not [k for k in rank0 if not torch.equal(rank0[k], resumed[k])]
