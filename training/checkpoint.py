"""Checkpoints: one safetensors file holding tensors, with the JSON model config in its header.

Tensors: ``model/<name>`` for the generator's state dict, plus any tensors the
caller adds under its own names (a training checkpoint adds ``optimizer/...``
and ``rng/...``, see :mod:`train_state`). The header's metadata holds
``ddn_config`` (the generator's config) and ``ddn_meta`` (the caller's metadata,
``{}`` when none; a training checkpoint's is ``{"train": ...}``), both JSON.
No pickle is ever loaded.

Writes are atomic: temp file in the same folder, fsync, rename. A crash mid-write
leaves the previous checkpoint untouched.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .networks import DDNGenerator, build_generator


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or not a DDN checkpoint."""


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(temp_path)`` then move the finished file onto ``path`` (fsync first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, model: DDNGenerator, tensors: dict[str, torch.Tensor] | None = None,
                    meta: dict[str, Any] | None = None) -> None:
    """Write the model (and optional extra tensors and JSON metadata) atomically to ``path``."""
    payload = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for key, value in (tensors or {}).items():
        payload[key] = value.detach().cpu().contiguous()
    header = {"ddn_config": json.dumps(model.config()), "ddn_meta": json.dumps(meta or {})}
    atomic_write(Path(path), lambda tmp: save_file(payload, str(tmp), metadata=header))


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Tensors, model config and metadata of a checkpoint, or CheckpointError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        tensors = load_file(str(path))

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {exc}") from None
    if "ddn_config" not in header:
        raise CheckpointError(f"{path} is a safetensors file but not a DDN checkpoint (no ddn_config in its header)")
    try:
        return tensors, json.loads(header["ddn_config"]), json.loads(header.get("ddn_meta", "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path} has a corrupt header: {exc}") from None


def model_from_tensors(tensors: dict[str, torch.Tensor], config: dict[str, Any], path: str | Path = "checkpoint") -> DDNGenerator:
    try:
        model = build_generator(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an invalid model config: {exc}") from None
    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not match its model config: {first}") from None
    return model


def load_generator(path: str | Path) -> DDNGenerator:
    """The generator stored in a checkpoint, in eval mode."""
    tensors, config, _ = read_checkpoint(path)
    return model_from_tensors(tensors, config, path).eval()
