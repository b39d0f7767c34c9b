"""The latent of a DDN sample (one branch index per layer) and the one rule that maps seeds to it, so a seed gives the
same image in every client; numpy only, as serving clients import it without torch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

SEED_RULE = "numpy.random.default_rng(seed).random(L); code = min(floor(K * u), K - 1)"
# What a generation graph does with a code outside [0, K) on some layer (the DDL clamps before its gather).
OUT_OF_RANGE_CODES = "clamped to [0, K-1] per layer"


def _branch_counts(k: int | Sequence[int], num_layers: int) -> np.ndarray:
    ks = np.full(num_layers, k, dtype=np.int64) if np.isscalar(k) else np.asarray(k, dtype=np.int64)
    if ks.shape != (num_layers,):
        raise ValueError(f"K per layer has {ks.shape[0]} entries, expected {num_layers}")
    if (ks < 1).any():
        raise ValueError(f"K must be >= 1 on every layer, got {ks.tolist()}")
    return ks


def codes_from_uniform(u: np.ndarray, k: int | Sequence[int]) -> np.ndarray:
    """Map floats u in [0, 1) of shape [B, L] to branch indices min(floor(K*u), K-1).

    The clamp keeps u values that round up to 1.0 in float32 inside [0, K).
    """
    u = np.asarray(u, dtype=np.float64)
    if u.ndim != 2:
        raise ValueError(f"u must have shape [B, L], got {list(u.shape)}")
    ks = _branch_counts(k, u.shape[1])
    return np.minimum(np.floor(ks * u), ks - 1).astype(np.int32)


def _check_seed(seed: object) -> int:
    """``seed`` as an int, or ValueError: numpy's default_rng takes integers >= 0 only."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed {seed!r} is not an integer; seeds are integers >= 0")
    if seed < 0:
        raise ValueError(f"seed {int(seed)} is negative; seeds are integers >= 0 "
                         "(numpy.random.default_rng refuses negative seeds)")
    return int(seed)


def codes_from_seed(seeds: int | Sequence[int], num_layers: int, k: int | Sequence[int]) -> np.ndarray:
    """Codes [len(seeds), L] int32, row b from numpy's default_rng(seeds[b]). Imports nothing else of the project:
    ddn-export copies this file into the served seed step.
    """
    seed_list = [_check_seed(s) for s in ([seeds] if np.isscalar(seeds) else list(seeds))]
    u = np.stack([np.random.default_rng(s).random(num_layers) for s in seed_list]) if seed_list \
        else np.zeros((0, num_layers))
    return codes_from_uniform(u, k)


def validate_codes(codes: np.ndarray, num_layers: int, k: int | Sequence[int]) -> np.ndarray:
    """Return codes as int32 [B, L] or raise ValueError naming what is wrong (shape, dtype, range)."""
    arr = np.asarray(codes)
    if arr.ndim != 2 or arr.shape[1] != num_layers:
        raise ValueError(f"codes must have shape [B, {num_layers}], got {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {arr.dtype}")
    ks = _branch_counts(k, num_layers)
    bad = np.argwhere((arr < 0) | (arr >= ks))
    if bad.size:
        b, l = bad[0]
        raise ValueError(f"code {int(arr[b, l])} at sample {b}, layer {l} is out of range [0, {int(ks[l])})")
    return arr.astype(np.int32)
