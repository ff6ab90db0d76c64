"""Checkpoints of a training run: RNG states, a key of the configuration and data, atomic writes.

A run resumed from its checkpoint ends with exactly the weights of an uninterrupted one: the checkpoint holds
the model, the optimizer, the best state so far, the early-stopping state and every RNG state.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maf_pipeline.locks import atomic_write

# Keys that change where/how fast things run but not the result: left out of the checkpoint hash.
NON_SEMANTIC = (
    "checkpoint_dir",
    "keep_checkpoint",
    "checkpoint_every",
    "eval_batch_size",
    "eval_max_scores",
    "num_threads",
    "distributed",
    "lock_wait_s",
)


def rng_state() -> dict[str, Any]:
    """Every RNG state of this process (python, numpy, torch CPU and CUDA), storable with ``torch.save``."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states :func:`rng_state` took."""
    random.setstate(state["python"])
    key = state["numpy_key"].numpy().astype(np.uint32)
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": key, "pos": state["numpy_pos"]}})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fingerprint(*parts: Any) -> str:
    """A short hash of configs (JSON) and data (arrays / tensors) to key checkpoints."""
    h = hashlib.sha1()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(part, torch.Tensor):  # big feature tables: shape, total and ~1k evenly spaced rows
            rows = torch.linspace(0, part.size(0) - 1, min(part.size(0), 1024)).long()
            h.update(
                repr((tuple(part.shape), str(part.dtype), float(part.sum(dtype=torch.float64)))).encode()
            )
            h.update(part[rows].detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write a training checkpoint atomically (a unique temporary name per process and call, then rename),
    so a kill never leaves half a file."""
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def state_copy(model: torch.nn.Module, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """A detached copy of the state dict, on ``device`` (default: where the weights are, so no host sync)."""
    return {k: v.detach().to(device or v.device, copy=True) for k, v in model.state_dict().items()}


def to_cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the state dict on the CPU (what checkpoints and artifacts store)."""
    return state_copy(model, "cpu")


def checkpoint_interval(setting: Any, save_seconds: float, epoch_seconds: float, budget: float = 0.05) -> int:
    """Epochs between checkpoints: ``setting`` when an integer; for ``auto`` the smallest interval that keeps
    saving under ``budget`` (5%) of training time, from the measured save and epoch times."""
    if setting not in (None, "auto"):
        value = int(setting)
        if value < 1:
            raise ValueError(f"training.checkpoint_every must be >= 1 or auto, got {setting!r}")
        return value
    return max(1, math.ceil(save_seconds / max(budget * epoch_seconds, 1e-9)))
