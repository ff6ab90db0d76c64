"""The training loop, split the way RecBole's ``Trainer`` is: set up, resume, train one epoch, validate, save,
stop. :func:`fit` strings them together; each step is a function of its own.

Batch order of epoch e comes from ``seed + e`` and the RNG states are checkpointed, so a run resumed after a
kill ends with exactly the weights of an uninterrupted run. The step has no host sync: batches are prepared on
the host (target positions, distinct items) and copied from pinned memory without blocking; loss sums stay on
the device until the epoch ends.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from maf_pipeline.metrics import pad_right, rank_targets, summarize
from maf_pipeline.models import SequentialRecommender
from maf_pipeline.parameters import filled
from maf_pipeline.progress import progress

from .batching import epoch_order, host_batch, to_device
from .checkpoints import (
    checkpoint_interval,
    rng_state,
    save_checkpoint,
    set_rng_state,
    state_copy,
    to_cpu_state,
)
from .ddp import gather_ranks, mean_over_ranks, world

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _log_epoch(
    epoch: int, epochs: int, parts: dict[str, float], valid: dict[str, float], secs: float
) -> None:
    loss = " ".join(f"{k} {v:.4f}" for k, v in parts.items() if k != "loss")
    val = " ".join(f"{k} {v:.4f}" for k, v in valid.items() if k != "num_users")
    logger.info(
        "epoch %d/%d: loss %.4f (%s) | valid %s | %.1f s", epoch, epochs, parts["loss"], loss, val, secs
    )


def _target_counts(targets: np.ndarray, num_items: int) -> torch.Tensor:
    return torch.from_numpy(np.bincount(targets.reshape(-1), minlength=num_items + 1)[: num_items + 1])


def configure_training_loss(model: SequentialRecommender, targets: np.ndarray, p: dict[str, Any]) -> None:
    """Set the model's next-item loss from ``training.loss`` (full / sampled_softmax) and its options."""
    loss = p["loss"]
    model.configure_loss(
        loss,
        chunk_size=p["loss_chunk_size"],
        num_negatives=int(p["num_negatives"]),
        negative_sampling=p["negative_sampling"],
        target_counts=_target_counts(targets, model.num_items) if loss == "sampled_softmax" else None,
        mask_history=p["loss_mask_history"],
    )


def _step_function(model: SequentialRecommender, setting: Any) -> Callable[[dict], dict]:
    """``model.training_step``, compiled when ``training.compile`` is true (inductor) or a backend name."""
    if not setting:
        return model.training_step
    backend = "inductor" if setting is True else str(setting)
    return torch.compile(model.training_step, backend=backend, dynamic=True)


class _Step(torch.nn.Module):
    """``model.training_step`` as a module's forward, so DistributedDataParallel sees (and syncs) the step."""

    def __init__(self, model: SequentialRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model.training_step(batch)


def make_optimizer(model: torch.nn.Module, p: dict[str, Any], device: torch.device) -> torch.optim.Optimizer:
    """Adam with ``learning_rate`` and ``weight_decay`` (fused kernels on CUDA)."""
    return torch.optim.Adam(
        model.parameters(),
        lr=float(p["learning_rate"]),
        weight_decay=float(p["weight_decay"]),
        **({"fused": True} if device.type == "cuda" else {}),
    )


def make_step(
    model: SequentialRecommender, p: dict[str, Any], device: torch.device
) -> Callable[[dict], dict]:
    """The training step: compiled on request, and under ``torch.distributed`` wrapped in
    DistributedDataParallel (``broadcast_buffers`` off: the fixed feature tables are equal on every rank)."""
    step = _step_function(model, p["compile"])
    if world()[1] > 1:
        ids = [device.index] if device.type == "cuda" else None
        step = torch.nn.parallel.DistributedDataParallel(
            _Step(model), device_ids=ids, broadcast_buffers=False
        )
    return step


def resume(
    model: SequentialRecommender,
    optimizer: torch.optim.Optimizer,
    checkpoint_path: Path | None,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The early-stopping state and best weights: fresh, or those of the checkpoint (model, optimizer and
    RNG states restored from it)."""
    state = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": []}
    best_state = state_copy(model)
    if checkpoint_path is None or not checkpoint_path.exists():
        return state, best_state
    rank, size = world()
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    best_state = {k: v.to(device) for k, v in ckpt["best_state"].items()}
    set_rng_state(ckpt["rng_ranks"][rank] if size > 1 else ckpt["rng"])
    logger.info("resuming %s from epoch %d (%s)", model.architecture, ckpt["state"]["epoch"], checkpoint_path)
    return ckpt["state"], best_state


def train_epoch(
    model: SequentialRecommender,
    step: Callable[[dict], dict],
    optimizer: torch.optim.Optimizer,
    data: dict[str, np.ndarray],
    p: dict[str, Any],
    epoch_seed: int,
    device: torch.device,
    epoch: int,
) -> dict[str, Any]:
    """One pass over the windows in the seeded epoch order; returns the loss parts summed on the device.

    Under DDP each global batch of ``batch_size`` windows is split over the ranks, and each rank's loss is
    weighted by its share of the batch's targets, so the averaged gradient is the one-process gradient.
    """
    inputs, targets, lengths = data["inputs"], data["targets"], data["lengths"]
    batch_size, (rank, size) = int(p["batch_size"]), world()
    with_items, use_bf16 = bool(getattr(model, "modalities", ())), bool(p["bf16"])
    model.train()
    order = epoch_order(lengths, batch_size, int(p["length_grouping"]), epoch_seed)
    sums: dict[str, Any] = {}
    for b in progress(range(num_batches(len(inputs), batch_size)), desc=f"epoch {epoch}", leave=False):
        idx = order[b * batch_size : (b + 1) * batch_size]
        share = 1.0
        if size > 1:  # this rank's part of the global batch, weighted by its share of the targets
            part = idx[rank::size] if len(idx) >= size else idx[:1]
            share = size * float((targets[part] > 0).sum()) / max(float((targets[idx] > 0).sum()), 1.0)
            idx = part
        host = host_batch(inputs, targets, lengths, idx, model.num_items, with_items, model.loss_mask_history)
        host = model.prepare_batch(host)
        batch = to_device(host, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            parts = step(batch)
        optimizer.zero_grad(set_to_none=True)
        (parts["loss"] * share if size > 1 else parts["loss"]).backward()
        if p["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(p["grad_clip"]))
        optimizer.step()
        for k, v in parts.items():  # summed on the device: no host sync per batch
            sums[k] = sums.get(k, 0.0) + v.detach().float()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # once per epoch, so that the training time is measured
    return sums


def num_batches(num_windows: int, batch_size: int) -> int:
    """Batches of one epoch (the last one may be short)."""
    return (num_windows + batch_size - 1) // batch_size


def validate(
    model: SequentialRecommender,
    valid_padded: np.ndarray,
    valid_targets: np.ndarray,
    p: dict[str, Any],
    metric: str,
    device: torch.device,
    exclude: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """Validation metrics in full precision (bf16 scores would tie, which the pessimistic rank penalises);
    under DDP the users are split over the ranks and their ranks gathered."""
    rank, size = world()
    users = np.arange(len(valid_targets))[rank::size]
    ranks = rank_targets(
        model, valid_padded[users], valid_targets[users], model.max_len, int(p["eval_batch_size"]),
        exclude=None if exclude is None else [exclude[u] for u in users],
        device=device, desc="validation", max_scores=p["eval_max_scores"],
    )  # fmt: skip
    if size > 1:
        ranks = gather_ranks(ranks, len(valid_targets))
    valid = summarize(ranks, list(p["ks"]))
    if metric not in valid:
        raise ValueError(f"early_stopping.metric {metric!r} is not one of {sorted(valid)}")
    return valid


def record_epoch(
    state: dict[str, Any],
    epoch: int,
    losses: dict[str, float],
    valid: dict[str, float],
    seconds: tuple[float, float],
    metric: str,
) -> bool:
    """Append the epoch to the history and update the early-stopping state; True when it is the best yet."""
    secs, train_secs = seconds
    state["history"].append(
        {"epoch": epoch, "loss": losses, "valid": valid, "seconds": secs,
         "train_seconds": train_secs, "valid_seconds": secs - train_secs}
    )  # fmt: skip
    improved = valid[metric] > state["best_score"]
    if improved:
        state.update(best_score=valid[metric], best_epoch=epoch, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch
    return improved


def save(
    model: SequentialRecommender,
    optimizer: torch.optim.Optimizer,
    best_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    checkpoint_path: Path,
) -> None:
    """Write the checkpoint (rank 0; with every rank's RNG state under DDP)."""
    rank, size = world()
    rng = rng_state()
    rng_ranks = [None] * size
    if size > 1:
        dist.all_gather_object(rng_ranks, rng)
    if rank == 0:
        payload = {
            "model": to_cpu_state(model),
            "optimizer": optimizer.state_dict(),
            "best_state": {k: v.cpu() for k, v in best_state.items()},
            "state": state,
            "rng": rng,
        }
        if size > 1:
            payload["rng_ranks"] = rng_ranks
        save_checkpoint(payload, checkpoint_path)
    if size > 1:
        dist.barrier()


def should_stop(state: dict[str, Any], epochs: int, patience: int | None) -> bool:
    """The epoch budget is spent, or ``patience`` epochs passed without a better validation metric."""
    return state["epoch"] >= epochs or (patience is not None and state["bad_epochs"] >= int(patience))


class _CheckpointSchedule:
    """When to save: every ``checkpoint_every`` epochs, or (``auto``) as often as keeps saving under 5 % of
    the training time, measured on the first save."""

    def __init__(self, every: Any, last_saved: int) -> None:
        self.every, self.last_saved = every, last_saved
        self.interval = None if every in (None, "auto") else checkpoint_interval(every, 0.0, 1.0)

    def due(self, epoch: int) -> bool:
        return self.interval is None or epoch - self.last_saved >= self.interval

    def saved(self, epoch: int, save_seconds: float, epoch_seconds: float) -> None:
        self.last_saved = epoch
        if self.every in (None, "auto"):
            self.interval = checkpoint_interval("auto", save_seconds, epoch_seconds)


def fit(
    model: SequentialRecommender,
    inputs: np.ndarray,
    targets: np.ndarray,
    valid_histories: list[np.ndarray],
    valid_targets: np.ndarray,
    training_params: dict[str, Any],
    seed: int,
    checkpoint_path: Path | None,
    device: torch.device,
    on_epoch_end: Callable[[int], None] | None = None,
    on_validation: Callable[[int, dict[str, float]], None] | None = None,
    valid_earlier: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Adam with early stopping on the validation metric; resumes from ``checkpoint_path`` when it exists.

    Returns the history; the model is left holding the best weights. ``on_validation(epoch, metrics)`` sees
    every epoch's validation metrics after the checkpoint is written (a tuner reports them and may raise to
    prune the run); ``on_epoch_end(epoch)`` is called last. With ``training.mask_history`` each validation
    user's ``valid_earlier`` items (all their training items) are left out of the ranking, as
    ``evaluation.mask_history`` does for the reported metrics, so the model is chosen on that protocol.
    """
    p = filled("training", training_params)  # the schema's defaults for keys a library caller omits
    if p["mask_history"] and valid_earlier is None:
        raise ValueError("training.mask_history needs each validation user's earlier items (valid_earlier)")
    exclude = valid_earlier if p["mask_history"] else None
    epochs = int(p["epochs"])
    metric, patience = p["early_stopping"]["metric"], p["early_stopping"]["patience"]
    configure_training_loss(model, targets, p)
    optimizer = make_optimizer(model, p, device)
    step = make_step(model, p, device)
    state, best_state = resume(model, optimizer, checkpoint_path, device)
    resumed_epochs = state["epoch"]  # epochs trained by an earlier process (their time is in the history)
    data = {"inputs": inputs, "targets": targets, "lengths": (inputs > 0).sum(axis=1)}
    valid_padded = pad_right(valid_histories, model.max_len)
    schedule = _CheckpointSchedule(p["checkpoint_every"], state["epoch"])
    while not should_stop(state, epochs, patience):
        epoch = state["epoch"] + 1
        started = time.perf_counter()
        sums = train_epoch(model, step, optimizer, data, p, seed + epoch, device, epoch)
        train_secs = time.perf_counter() - started
        valid = validate(model, valid_padded, valid_targets, p, metric, device, exclude)
        if world()[1] > 1:
            sums = mean_over_ranks(sums)
        losses = {
            k: float(v) / max(num_batches(len(inputs), int(p["batch_size"])), 1) for k, v in sums.items()
        }
        secs = time.perf_counter() - started
        if record_epoch(state, epoch, losses, valid, (secs, train_secs), metric):
            best_state = state_copy(model)
        _log_epoch(epoch, epochs, losses, valid, secs)
        if checkpoint_path is not None and schedule.due(epoch):
            saving = time.perf_counter()
            save(model, optimizer, best_state, state, checkpoint_path)
            schedule.saved(epoch, time.perf_counter() - saving, secs)
        if on_validation is not None:
            on_validation(epoch, valid)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    model.load_state_dict(best_state)
    stopped_early = state["epoch"] < epochs
    if stopped_early:
        logger.info("early stop after epoch %d: no %s gain for %s epochs", state["epoch"], metric, patience)
    return {
        "epochs": state["history"],
        "best_epoch": state["best_epoch"],
        "best_valid": state["history"][state["best_epoch"] - 1]["valid"] if state["best_epoch"] else None,
        "early_stopping_metric": metric,
        "stopped_early": stopped_early,
        "resumed_epochs": resumed_epochs,
    }
