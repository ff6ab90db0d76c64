"""Training nodes: cut training windows, fit a registered model with early stopping and resumable checkpoints.

Objectives (``training.objective``):
  * ``all_positions`` (default): causal loss at every position of a window. A history ``s_1..s_n`` has targets
    ``s_2..s_n``; it is cut from the end into windows of ``max_len`` targets (the most recent window gets the
    full context), so each target is predicted exactly once per epoch.
  * ``last_position``: RecBole's prefix augmentation, one sample per target ``s_t`` with input
    ``s_{t-max_len}..s_{t-1}`` and the loss at the last position only (same targets, ~max_len times the cost).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from maf_pipeline.devices import resolve_device
from maf_pipeline.locks import atomic_write, folder_lock
from maf_pipeline.metrics import pad_right, rank_targets, summarize
from maf_pipeline.models import SequentialRecommender, build_model, feature_tables
from maf_pipeline.progress import progress

logger = logging.getLogger(__name__)

OBJECTIVES = ("all_positions", "last_position")
# Keys that change where/how fast things run but not the result: left out of the checkpoint hash.
_NON_SEMANTIC = (
    "checkpoint_dir",
    "keep_checkpoint",
    "checkpoint_every",
    "eval_batch_size",
    "eval_max_scores",
    "num_threads",
    "distributed",
    "lock_wait_s",
)


def training_windows(
    sequences: list[np.ndarray], max_len: int, objective: str = "all_positions"
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ``(W, L)`` input and target windows (target 0 = no loss) for the chosen objective."""
    if objective not in OBJECTIVES:
        raise ValueError(f"training.objective must be one of {OBJECTIVES}, got {objective!r}")
    spans = []  # (user, start, end): inputs s[start:end], targets s[start+1:end+1]
    for u, seq in enumerate(sequences):
        n = len(seq)
        if objective == "all_positions":
            end = n - 1
            while end >= 1:
                spans.append((u, max(0, end - max_len), end))
                end -= max_len
        else:
            spans.extend((u, max(0, t - max_len), t) for t in range(1, n))
    inputs = np.zeros((len(spans), max_len), dtype=np.int64)
    targets = np.zeros_like(inputs)
    for w, (u, a, b) in enumerate(spans):
        seq = np.asarray(sequences[u], dtype=np.int64)
        inputs[w, : b - a] = seq[a:b]
        if objective == "all_positions":
            targets[w, : b - a] = seq[a + 1 : b + 1]
        else:
            targets[w, b - a - 1] = seq[b]
    return inputs, targets


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    key = state["numpy_key"].numpy().astype(np.uint32)
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": key, "pos": state["numpy_pos"]}})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fingerprint(*parts: Any) -> str:
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


def _state_copy(model: torch.nn.Module, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """A detached copy of the state dict, on ``device`` (default: where the weights are, so no host sync)."""
    return {k: v.detach().to(device or v.device, copy=True) for k, v in model.state_dict().items()}


def _to_cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return _state_copy(model, "cpu")


def _log_epoch(
    epoch: int, epochs: int, parts: dict[str, float], valid: dict[str, float], secs: float
) -> None:
    loss = " ".join(f"{k} {v:.4f}" for k, v in parts.items() if k != "loss")
    val = " ".join(f"{k} {v:.4f}" for k, v in valid.items() if k != "num_users")
    logger.info(
        "epoch %d/%d: loss %.4f (%s) | valid %s | %.1f s", epoch, epochs, parts["loss"], loss, val, secs
    )


def host_batch(
    inputs: np.ndarray, targets: np.ndarray, lengths: np.ndarray, idx: np.ndarray, num_items: int,
    with_items: bool,
) -> dict[str, np.ndarray]:  # fmt: skip
    """One training batch prepared on the host, so the device step has no data-dependent shapes.

    Windows are trimmed to the longest in the batch (right padding). ``target_index``/``targets``: flat
    positions and items of the targets; ``items``/``item_inverse`` (feature models): the distinct items and
    each position's index into them.
    """
    width = max(int(lengths[idx].max()), 1)
    x, y = inputs[idx, :width], targets[idx, :width]
    flat = y.reshape(-1)
    index = np.flatnonzero(flat)
    batch = {"item_seq": x, "target_seq": y, "target_index": index, "targets": flat[index]}
    if with_items:
        if x.size * 16 < num_items:  # small batch, big catalog: sort
            items, inverse = np.unique(x, return_inverse=True)
        else:  # mark the items present: O(N + B L), no sort
            present = np.zeros(num_items + 1, dtype=bool)
            present[x.reshape(-1)] = True
            items = np.flatnonzero(present)
            slot = np.zeros(num_items + 1, dtype=np.int64)
            slot[items] = np.arange(len(items))
            inverse = slot[x]
        batch.update(items=items.astype(np.int64), item_inverse=inverse.reshape(x.shape).astype(np.int64))
    return batch


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Host arrays to device tensors: pinned memory and non-blocking copies on CUDA."""
    cuda = device.type == "cuda"
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.pin_memory().to(device, non_blocking=True) if cuda else t
    return out


def epoch_order(lengths: np.ndarray, batch_size: int, grouping: int, seed: int) -> np.ndarray:
    """The window order of one epoch: a seeded permutation; with ``grouping`` > 0, windows are sorted by
    length within consecutive groups of ``grouping`` batches and the batches are then shuffled, so a batch
    holds windows of similar length (little right padding: the encoder's cost follows the real positions)
    while every window is still seen once per epoch in a seeded random batch order."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    if grouping <= 0:
        return order
    group = grouping * batch_size
    for start in range(0, len(order), group):
        part = order[start : start + group]
        order[start : start + group] = part[np.argsort(lengths[part], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))]) if batches else order


def checkpoint_interval(setting: Any, save_seconds: float, epoch_seconds: float, budget: float = 0.05) -> int:
    """Epochs between checkpoints: ``setting`` when an integer; for ``auto`` the smallest interval that keeps
    saving under ``budget`` (5%) of training time, from the measured save and epoch times."""
    if setting not in (None, "auto"):
        value = int(setting)
        if value < 1:
            raise ValueError(f"training.checkpoint_every must be >= 1 or auto, got {setting!r}")
        return value
    return max(1, math.ceil(save_seconds / max(budget * epoch_seconds, 1e-9)))


def _target_counts(targets: np.ndarray, num_items: int) -> torch.Tensor:
    return torch.from_numpy(np.bincount(targets.reshape(-1), minlength=num_items + 1)[: num_items + 1])


def configure_training_loss(model: SequentialRecommender, targets: np.ndarray, p: dict[str, Any]) -> None:
    """Set the model's next-item loss from ``training.loss`` (full / sampled_softmax) and its options."""
    loss = p.get("loss", "full") or "full"
    sampling = p.get("negative_sampling", "uniform")
    model.configure_loss(
        loss,
        chunk_size=p.get("loss_chunk_size"),
        num_negatives=int(p.get("num_negatives", 256)),
        negative_sampling=sampling,
        target_counts=_target_counts(targets, model.num_items) if loss == "sampled_softmax" else None,
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


def init_distributed(training_params: dict[str, Any]) -> tuple[int, int]:
    """``(rank, world_size)``; under ``torchrun`` (``WORLD_SIZE`` > 1, ``training.distributed: auto``)
    joins the process group (NCCL on CUDA, else gloo) once. ``distributed: false`` trains in one process."""
    setting = training_params.get("distributed", "auto")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if setting is False or world <= 1 or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and training_params.get("device", "auto") != "cpu"
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
) -> dict[str, Any]:
    """Adam with early stopping on the validation metric; resumes from ``checkpoint_path`` when it exists.

    ``on_validation(epoch, metrics)`` sees every epoch's validation metrics after the checkpoint is written (a
    tuner reports them and may raise to prune the run); ``on_epoch_end(epoch)`` is called last.

    Batch order of epoch e comes from ``seed + e`` and the RNG states are checkpointed (every
    ``checkpoint_every`` epochs), so a run resumed after a kill ends with exactly the weights of an
    uninterrupted run. The step has no host sync: batches are prepared on the host (target positions,
    distinct items) and copied from pinned memory without blocking; loss sums stay on the device until the
    epoch ends. Returns the history; the model is left holding the best weights.

    Under ``torch.distributed`` (see :func:`init_distributed`) the model is wrapped in
    DistributedDataParallel; each global batch of ``batch_size`` windows is split over the ranks, and each
    rank's loss is weighted by its share of the batch's targets, so the averaged gradient is the one-process
    gradient of the whole batch. Validation users are split over the ranks and their ranks gathered; loss
    sums are reduced; only rank 0 writes checkpoints (with every rank's RNG state).
    """
    p = training_params
    epochs, batch_size = int(p["epochs"]), int(p["batch_size"])
    stop = p.get("early_stopping", {}) or {}
    metric, patience = stop.get("metric", "ndcg@20"), stop.get("patience")
    ks = list(p.get("ks", [10, 20]))
    use_bf16 = bool(p.get("bf16", False))
    configure_training_loss(model, targets, p)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=float(p["learning_rate"]),
        weight_decay=float(p.get("weight_decay", 0.0)),
        **({"fused": True} if device.type == "cuda" else {}),
    )
    rank, world = _world()
    step = _step_function(model, p.get("compile", False))
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        # broadcast_buffers off: the fixed feature tables are equal on every rank, never re-sent per step
        ddp = torch.nn.parallel.DistributedDataParallel
        step = ddp(_Step(model), device_ids=ids, broadcast_buffers=False)
    state = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": []}
    best_state = _state_copy(model)
    if checkpoint_path is not None and checkpoint_path.exists():
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        best_state = {k: v.to(device) for k, v in ckpt["best_state"].items()}
        state = ckpt["state"]
        _set_rng_state(ckpt["rng_ranks"][rank] if world > 1 else ckpt["rng"])
        logger.info("resuming %s from epoch %d (%s)", model.architecture, state["epoch"], checkpoint_path)

    resumed_epochs = state["epoch"]  # epochs trained by an earlier process (their time is in the history)
    lengths = (inputs > 0).sum(axis=1)
    with_items = bool(getattr(model, "modalities", ()))
    valid_padded = pad_right(valid_histories, model.max_len)
    eval_batch = int(p.get("eval_batch_size", 512))
    every, last_saved = p.get("checkpoint_every", "auto"), state["epoch"]
    interval = None if every in (None, "auto") else checkpoint_interval(every, 0.0, 1.0)
    num_batches = (len(inputs) + batch_size - 1) // batch_size
    while state["epoch"] < epochs and not (patience is not None and state["bad_epochs"] >= int(patience)):
        epoch = state["epoch"] + 1
        start_time = time.perf_counter()
        model.train()
        order = epoch_order(lengths, batch_size, int(p.get("length_grouping", 0) or 0), seed + epoch)
        sums: dict[str, torch.Tensor | float] = {}
        for b in progress(range(num_batches), desc=f"epoch {epoch}", leave=False):
            idx = order[b * batch_size : (b + 1) * batch_size]
            share = 1.0
            if world > 1:  # this rank's part of the global batch, weighted by its share of the targets
                part = idx[rank::world] if len(idx) >= world else idx[:1]
                share = world * float((targets[part] > 0).sum()) / max(float((targets[idx] > 0).sum()), 1.0)
                idx = part
            host = model.prepare_batch(host_batch(inputs, targets, lengths, idx, model.num_items, with_items))
            batch = to_device(host, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                parts = step(batch)
            optimizer.zero_grad(set_to_none=True)
            (parts["loss"] * share if world > 1 else parts["loss"]).backward()
            if p.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(p["grad_clip"]))
            optimizer.step()
            for k, v in parts.items():  # summed on the device: no host sync per batch
                sums[k] = sums.get(k, 0.0) + v.detach().float()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # once per epoch, so that the training time is measured
        train_secs = time.perf_counter() - start_time
        # Validation in full precision: bf16 scores would create ties, which the pessimistic rank penalises.
        users = np.arange(len(valid_targets))[rank::world]
        ranks = rank_targets(
            model, valid_padded[users], valid_targets[users], model.max_len, eval_batch, device=device,
            desc="validation", max_scores=p.get("eval_max_scores"),
        )  # fmt: skip
        if world > 1:
            ranks, sums = _gather_ranks(ranks, len(valid_targets)), _mean_over_ranks(sums)
        valid = summarize(ranks, ks)
        if metric not in valid:
            raise ValueError(f"early_stopping.metric {metric!r} is not one of {sorted(valid)}")
        parts_mean = {k: float(v) / max(num_batches, 1) for k, v in sums.items()}
        secs = time.perf_counter() - start_time
        state["history"].append(
            {"epoch": epoch, "loss": parts_mean, "valid": valid, "seconds": secs,
             "train_seconds": train_secs, "valid_seconds": secs - train_secs}
        )  # fmt: skip
        if valid[metric] > state["best_score"]:
            state.update(best_score=valid[metric], best_epoch=epoch, bad_epochs=0)
            best_state = _state_copy(model)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        _log_epoch(epoch, epochs, parts_mean, valid, secs)
        if checkpoint_path is not None and (interval is None or epoch - last_saved >= interval):
            saved = time.perf_counter()
            rng = _rng_state()
            rng_ranks = [None] * world
            if world > 1:
                dist.all_gather_object(rng_ranks, rng)
            if rank == 0:
                payload = {
                    "model": _to_cpu_state(model),
                    "optimizer": optimizer.state_dict(),
                    "best_state": {k: v.cpu() for k, v in best_state.items()},
                    "state": state,
                    "rng": rng,
                }
                if world > 1:
                    payload["rng_ranks"] = rng_ranks
                save_checkpoint(payload, checkpoint_path)
            if world > 1:
                dist.barrier()
            last_saved = epoch
            if every in (None, "auto"):  # from the measured cost: saving < 5% of the time
                interval = checkpoint_interval("auto", time.perf_counter() - saved, secs)
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


def _gather_ranks(local: np.ndarray, total: int) -> np.ndarray:
    """Every rank's validation ranks (users ``rank::world``) back in user order, on every rank."""
    _, world = _world()
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, local)
    out = np.empty(total, dtype=np.int64)
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


def _mean_over_ranks(sums: dict[str, Any]) -> dict[str, Any]:
    """Epoch loss sums averaged over the ranks (each rank's sums are over its share of every batch)."""
    _, world = _world()
    out = {}
    for k, v in sums.items():
        t = torch.as_tensor(v, dtype=torch.float32).clone()
        t = t.to("cuda") if dist.get_backend() == "nccl" else t.cpu()
        dist.all_reduce(t)
        out[k] = t / world
    return out


def train_model(
    train_sequences: pd.DataFrame,
    valid_sequences: pd.DataFrame,
    item_index: pd.DataFrame,
    image_features: dict[str, Any],
    text_features: dict[str, Any],
    category_features: dict[str, Any],
    model_params: dict[str, Any],
    training_params: dict[str, Any],
    max_len: int,
    seed: int,
    on_epoch_end: Callable[[int], None] | None = None,
    on_validation: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the architecture named in ``model_params["architecture"]`` and return its artifact and history.

    The artifact is the best (validation) state dict plus ``__metadata__`` (architecture, config, num_items,
    max_len, best epoch, seed); fixed feature tables are buffers outside the state dict. A checkpoint under
    ``training.checkpoint_dir/<architecture>/<hash of config + data>/`` makes a killed run resume.
    """
    started = time.perf_counter()
    name = model_params.get("architecture")
    if not name:
        raise ValueError("the model parameter block needs an 'architecture' key (e.g. maf, sasrec)")
    max_len, seed = int(max_len), int(seed)
    num_items = int(item_index["item_idx"].max())
    rank, world = init_distributed(training_params)
    device = resolve_device(training_params.get("device", "auto"))
    if world > 1 and device.type == "cuda":  # one GPU per rank (torchrun's LOCAL_RANK)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    if training_params.get("num_threads"):
        torch.set_num_threads(int(training_params["num_threads"]))
    features = feature_tables(image_features, text_features, category_features)
    histories = [np.asarray(s, dtype=np.int64) for s in train_sequences["items"]]
    inputs, targets = training_windows(histories, max_len, training_params.get("objective", "all_positions"))
    valid_h = [np.asarray(h, dtype=np.int64) for h in valid_sequences["history"]]
    valid_t = valid_sequences["target"].to_numpy(dtype=np.int64)
    if not len(inputs) or not len(valid_t):
        raise ValueError("no training targets or no validation users: check the sequences pipeline output")

    seed_everything(seed)
    model = build_model(name, num_items, max_len, model_params, features).to(device)
    used = {k: v for k, v in features.items() if k in getattr(model, "modalities", ())}
    semantic = {k: v for k, v in training_params.items() if k not in _NON_SEMANTIC}
    key = _fingerprint(model_params, semantic, seed, max_len, num_items, inputs, targets, valid_t, used)
    ckpt_dir = training_params.get("checkpoint_dir")
    ckpt = Path(ckpt_dir) / name / key / "checkpoint.pt" if ckpt_dir else None
    logger.info(
        "training %s: %s parameters, %d items, %d windows (%s), %d valid users, device %s",
        name,
        f"{sum(p.numel() for p in model.parameters()):,}",
        num_items,
        len(inputs),
        training_params.get("objective", "all_positions"),
        len(valid_t),
        device,
    )
    # one run at a time on a checkpoint folder: a second fails naming the first, or waits lock_wait_s
    # (under DDP the ranks are one run: rank 0 holds the lock and writes)
    folder, wait_s = (ckpt.parent if ckpt and rank == 0 else None), training_params.get("lock_wait_s", 0)
    with folder_lock(folder, wait_s, "training checkpoint folder", "training.lock_wait_s"):
        history = fit(
            model, inputs, targets, valid_h, valid_t, training_params, seed, ckpt, device, on_epoch_end,
            on_validation,
        )  # fmt: skip
        if ckpt is not None and rank == 0 and not training_params.get("keep_checkpoint", False):
            shutil.rmtree(ckpt.parent, ignore_errors=True)
    history.update(
        architecture=name,
        seed=seed,
        device=str(device),
        num_windows=len(inputs),
        world_size=world,
        # a resumed run's wall time includes its earlier processes' epochs, not only this process
        total_seconds=time.perf_counter()
        - started
        + sum(e["seconds"] for e in history["epochs"][: history["resumed_epochs"]]),
    )
    artifact: dict[str, Any] = _to_cpu_state(model)
    artifact["__metadata__"] = {
        "architecture": name,
        "config": model_params,
        "num_items": num_items,
        "max_len": max_len,
        "best_epoch": history["best_epoch"],
        "seed": seed,
        "feature_dims": {k: int(v.shape[1]) for k, v in used.items()},
        "checkpoint_key": key,
    }
    return artifact, history
