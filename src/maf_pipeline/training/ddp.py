"""Distributed data parallel helpers: the process group from ``torchrun``'s environment, ranks, reductions."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def init_distributed(training_params: dict[str, Any]) -> tuple[int, int]:
    """``(rank, world_size)``; under ``torchrun`` (``WORLD_SIZE`` > 1, ``training.distributed: auto``)
    joins the process group (NCCL on CUDA, else gloo) once. ``distributed: false`` trains in one process."""
    setting = training_params["distributed"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if setting is False or world <= 1 or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and training_params["device"] != "cpu"
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_ranks(local: np.ndarray, total: int) -> np.ndarray:
    """Every rank's validation ranks (users ``rank::world``) back in user order, on every rank."""
    _, size = world()
    parts: list[Any] = [None] * size
    dist.all_gather_object(parts, local)
    out = np.empty(total, dtype=np.int64)
    for r, part in enumerate(parts):
        out[r::size] = part
    return out


def mean_over_ranks(sums: dict[str, Any]) -> dict[str, Any]:
    """Epoch loss sums averaged over the ranks (each rank's sums are over its share of every batch)."""
    _, size = world()
    out = {}
    for k, v in sums.items():
        t = torch.as_tensor(v, dtype=torch.float32).clone()
        t = t.to("cuda") if dist.get_backend() == "nccl" else t.cpu()
        dist.all_reduce(t)
        out[k] = t / size
    return out
