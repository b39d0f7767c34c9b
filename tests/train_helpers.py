"""Shared pieces of the trainer tests: a tiny run config and bitwise comparisons of run states."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddn.training.train_loop import TrainConfig, TrainResult, train
from ddn.training.train_state import optimizer_tensors

# Small enough for ~5 ms steps; high chain dropout so resumed runs must restore that stream too.
TINY = TrainConfig(dataset="digits", preset="tiny", steps=20, batch=16, chain_dropout=0.5, split_and_prune=True, checkpoint_every=0, log_every=5,
                   sample_seeds=4, seed=3, device="cpu")


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from two threads, and on a busy 2-core machine lose 10x to them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**changes) -> TrainConfig:
    return dataclasses.replace(TINY, **changes)


def run_state(result: TrainResult) -> dict[str, torch.Tensor]:
    """Parameters, split-and-prune statistics (buffers), weight average and Adam state of a finished run."""
    state = {f"model/{k}": v.detach().clone() for k, v in result.model.state_dict().items()}
    if result.sampled_model is not result.model:
        state.update({f"average/{k}": v.detach().clone() for k, v in result.sampled_model.state_dict().items()})
    state.update({k: v.detach().clone() for k, v in optimizer_tensors(result.model, result.optimizer).items()})
    return state


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    assert any(k.endswith("usage.count") for k in a) and any(k.endswith("exp_avg_sq") for k in a)
    assert any(k.startswith("average/") for k in a), "the run kept no weight average"
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ: {different[:5]}"


def distributed_worker(rank: int, world: int, port: int, config: TrainConfig, out_dir: Path, result_dir: Path,
                       resume: bool, max_seconds: float | None = None) -> None:
    """One rank of a gloo run (torch.multiprocessing spawn target): train, then dump this rank's state."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = train(config, out_dir, resume=resume, progress=False, max_seconds=max_seconds)
    state = {k: v.contiguous() for k, v in run_state(result).items()}
    state["splits"] = torch.tensor(result.splits)
    state["step"] = torch.tensor(result.step)
    save_file(state, str(Path(result_dir) / f"rank{rank}.safetensors"))
