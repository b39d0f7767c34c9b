"""The resumable state of a training run: a checkpoint file whose ``model/`` is the model the run samples (so
ddn-export reads it), with the trained weights, Adam's state and the RNG states beside it. A run folder keeps last
and previous, so one complete checkpoint always exists (layout: docs/training.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, model_from_tensors, read_checkpoint, save_checkpoint
from .networks import DDNGenerator

LAST = "last.safetensors"
PREVIOUS = "previous.safetensors"
FORMAT = "ddn-train/1"
TRAINED = "trained/"  # tensor name prefix of the trained weights beside a weight average


@dataclass
class RunState:
    """Everything a resumed run needs, read from one checkpoint (all tensors on CPU)."""

    path: Path
    model: DDNGenerator  # the trained weights
    average: DDNGenerator | None  # the weight average, when the run keeps one
    optimizer_state: dict[int, dict[str, torch.Tensor]]
    rng: dict[str, list[torch.Tensor]]  # stream name -> state per rank
    train: dict[str, Any]  # step, images_seen, splits, world_size, config, ...
    notes: list[str] = field(default_factory=list)  # what fell back, for the user


def optimizer_tensors(model: DDNGenerator, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    index = {id(p): i for i, p in enumerate(model.parameters())}
    out = {}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if not torch.is_tensor(value):
                raise TypeError(f"optimizer state {key!r} is not a tensor; only per-parameter tensors are saved")
            out[f"optimizer/{index[id(param)]}/{key}"] = value
    return out


def rng_tensors(states: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"rng/{name}/{rank}": state for name, per_rank in states.items() for rank, state in enumerate(per_rank)}


def write_run_checkpoint(out_dir: Path, model: DDNGenerator, optimizer: torch.optim.Optimizer,
                         rng: dict[str, list[torch.Tensor]], train: dict[str, Any],
                         average: DDNGenerator | None = None) -> Path:
    """Rotate last -> previous and write the new last checkpoint atomically. Returns its path.

    ``model`` holds the trained weights; with an ``average`` that is what ``model/`` holds.
    """
    out_dir = Path(out_dir)
    extra = {**optimizer_tensors(model, optimizer), **rng_tensors(rng)}
    if average is not None:
        extra.update({f"{TRAINED}{name}": value for name, value in model.state_dict().items()})
    meta = {"train": {**train, "format": FORMAT}}
    last = out_dir / LAST
    if last.exists():
        os.replace(last, out_dir / PREVIOUS)
    save_checkpoint(last, model if average is None else average, tensors=extra, meta=meta)
    return last


def read_run_checkpoint(path: Path) -> RunState:
    """Parse and verify one training checkpoint; CheckpointError (one line) if anything is off."""
    tensors, config, meta = read_checkpoint(path)  # checks the digest
    train = meta.get("train")
    if not isinstance(train, dict) or train.get("format") != FORMAT:
        raise CheckpointError(f"{path} holds a model but no training state (not written by ddn-train)")
    sampled = model_from_tensors(tensors, config, path)
    if any(name.startswith(TRAINED) for name in tensors):
        model, average = model_from_tensors(tensors, config, path, prefix=TRAINED), sampled
    else:
        model, average = sampled, None
    params = list(model.parameters())
    optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
    rng: dict[str, dict[int, torch.Tensor]] = {}
    for name, value in tensors.items():
        parts = name.split("/")
        if parts[0] == "optimizer" and len(parts) == 3 and parts[1].isdigit():
            index = int(parts[1])
            if index >= len(params) or (value.ndim and value.shape != params[index].shape):
                raise CheckpointError(f"{path}: optimizer state {name} does not fit the model's parameters")
            optimizer_state.setdefault(index, {})[parts[2]] = value
        elif parts[0] == "rng" and len(parts) == 3 and parts[2].isdigit():
            rng.setdefault(parts[1], {})[int(parts[2])] = value
    per_rank = {}
    for stream, states in rng.items():
        if sorted(states) != list(range(len(states))):
            raise CheckpointError(f"{path}: RNG states of stream {stream!r} are incomplete")
        per_rank[stream] = [states[r] for r in range(len(states))]
    return RunState(Path(path), model, average, optimizer_state, per_rank, train)


def find_resumable(out_dir: Path, move_bad: bool = True) -> RunState:
    """The newest good checkpoint of a run folder, last else previous; with ``move_bad`` (rank 0) a bad last is moved
    aside. CheckpointError when neither is good.
    """
    out_dir = Path(out_dir)
    last, previous = out_dir / LAST, out_dir / PREVIOUS
    if not last.exists() and not previous.exists():
        raise CheckpointError(f"nothing to resume: no {LAST} or {PREVIOUS} in {out_dir}")
    try:
        return read_run_checkpoint(last)
    except CheckpointError as exc:
        if not previous.exists():
            raise
        last_error = str(exc)
    try:
        state = read_run_checkpoint(previous)
    except CheckpointError as exc:
        raise CheckpointError(f"{last_error}; and {exc}") from None
    if not move_bad:
        state.notes.append(f"{last_error}; resuming from {PREVIOUS} (step {state.train['step']})")
    elif last.exists():
        aside = last.with_name(LAST + ".bad")
        os.replace(last, aside)  # so that the next rotation does not push it over the good previous
        state.notes.append(f"{last_error}; moved it to {aside.name} and resuming from {PREVIOUS} "
                           f"(step {state.train['step']})")
    else:
        state.notes.append(f"{LAST} is missing (interrupted write?); resuming from {PREVIOUS} "
                           f"(step {state.train['step']})")
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[int, dict[str, torch.Tensor]]) -> None:
    """Put per-parameter tensors back into an optimizer built over the same parameters, each laid out in memory as
    its parameter is (checkpoints store them contiguous): fused Adam walks a parameter and its moments in memory
    order, so a channels-last weight with a contiguous moment would be stepped wrongly.
    """
    full = optimizer.state_dict()
    full["state"] = {i: dict(s) for i, s in state.items()}
    optimizer.load_state_dict(full)
    for parameter, moments in optimizer.state.items():
        for key, value in moments.items():
            if torch.is_tensor(value) and value.shape == parameter.shape and value.stride() != parameter.stride():
                moments[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)
