"""Checkpoints: one safetensors file of tensors with the JSON model config in its header, a digest of every tensor's
bytes so damaged weights are refused, written canonically and atomically (same content, same bytes; a crash leaves
the previous file). Layout: docs/training.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ddn.file_modes import new_file_mode
from ddn.leftovers import remove_stale, tagged

from .networks import DDNGenerator, build_generator


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or not a DDN checkpoint."""


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """BLAKE2b over names, dtypes, shapes and bytes of all tensors, in name order."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_prefix = f".{path.name}."
    remove_stale(path.parent, temp_prefix)
    fd, tmp = tempfile.mkstemp(prefix=tagged(temp_prefix), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp's 0600 would outlive the rename: follow the umask instead
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
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


def write_safetensors(f: BinaryIO, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file whose header has sorted keys, so its bytes depend on the content only (safetensors' own
    metadata order changes from run to run).
    """
    data = memoryview(safetensors_bytes(tensors, metadata))
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(bytes(data[8:8 + size])), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to a multiple of 8 bytes with spaces
    f.write(len(header).to_bytes(8, "little"))
    f.write(header)
    f.write(data[8 + size:])


def save_checkpoint(path: str | Path, model: DDNGenerator, tensors: dict[str, torch.Tensor] | None = None,
                    meta: dict[str, Any] | None = None) -> None:
    """Write the model (and optional extra tensors and JSON metadata) atomically to ``path``."""
    payload = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for key, value in (tensors or {}).items():
        payload[key] = value.detach().cpu().contiguous()
    header = {"ddn_config": json.dumps(model.config()), "ddn_meta": json.dumps(meta or {}),
              "ddn_digest": tensor_digest(payload)}
    atomic_write(Path(path), lambda f: write_safetensors(f, payload, header))


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
        config, meta = json.loads(header["ddn_config"]), json.loads(header.get("ddn_meta", "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path} has a corrupt header: {exc}") from None
    if not isinstance(config, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has a corrupt header: ddn_config and ddn_meta must be JSON objects")
    # Training checkpoints written before ddn_digest existed carry the digest in their training metadata.
    digest = header.get("ddn_digest") or (meta.get("train") or {}).get("digest")
    if digest is not None and tensor_digest(tensors) != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: its tensor bytes do not match the digest written with them")
    return tensors, config, meta


def _build(config: dict[str, Any], path: str | Path, device: str) -> DDNGenerator:
    try:
        with torch.device(device):
            return build_generator(config)
    except Exception as exc:  # the config comes from a file: any failure to build from it is a bad config
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"{path} has an invalid model config: {message}") from None


def model_from_tensors(tensors: dict[str, torch.Tensor], config: dict[str, Any], path: str | Path = "checkpoint",
                       prefix: str = "model/") -> DDNGenerator:
    """The model ``config`` describes, holding the checkpoint's tensors named ``prefix<name>``; shapes are checked on
    the meta device first, so a corrupt config is refused before it can exhaust memory.
    """
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = {k: tuple(v.shape) for k, v in _build(config, path, "meta").state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        reshaped = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        problem = (f"tensor {missing[0]!r} is missing" if missing else
                   f"tensor {unexpected[0]!r} is not in the model" if unexpected else
                   f"tensor {reshaped[0]!r} has shape {list(found[reshaped[0]])}, "
                   f"the config gives {list(expected[reshaped[0]])}")
        raise CheckpointError(f"{path} does not match its model config: {problem}")
    model = _build(config, path, "cpu")
    model.load_state_dict(state)
    return model


def load_generator(path: str | Path) -> DDNGenerator:
    """The generator stored in a checkpoint, in eval mode."""
    tensors, config, _ = read_checkpoint(path)
    return model_from_tensors(tensors, config, path).eval()
