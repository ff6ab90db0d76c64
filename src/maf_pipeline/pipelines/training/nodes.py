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
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from maf_pipeline.locks import atomic_write, folder_lock
from maf_pipeline.metrics import rank_targets, summarize
from maf_pipeline.models import SequentialRecommender, build_model, feature_tables
from maf_pipeline.progress import progress

logger = logging.getLogger(__name__)

OBJECTIVES = ("all_positions", "last_position")
# Keys that change where/how fast things run but not the result: left out of the checkpoint hash.
_NON_SEMANTIC = ("checkpoint_dir", "keep_checkpoint", "eval_batch_size", "num_threads", "lock_wait_s")


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


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))  # a unique temporary name per process and call


def _to_cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _log_epoch(
    epoch: int, epochs: int, parts: dict[str, float], valid: dict[str, float], secs: float
) -> None:
    loss = " ".join(f"{k} {v:.4f}" for k, v in parts.items() if k != "loss")
    val = " ".join(f"{k} {v:.4f}" for k, v in valid.items() if k != "num_users")
    logger.info(
        "epoch %d/%d: loss %.4f (%s) | valid %s | %.1f s", epoch, epochs, parts["loss"], loss, val, secs
    )


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
) -> dict[str, Any]:
    """Adam with early stopping on the validation metric; resumes from ``checkpoint_path`` when it exists.

    Batch order of epoch e comes from ``seed + e`` and the torch RNG state is checkpointed, so a run resumed
    after a kill ends with exactly the weights of an uninterrupted run. Returns the history; the model is left
    holding the best weights.
    """
    p = training_params
    epochs, batch_size = int(p["epochs"]), int(p["batch_size"])
    stop = p.get("early_stopping", {}) or {}
    metric, patience = stop.get("metric", "ndcg@20"), stop.get("patience")
    ks = list(p.get("ks", [10, 20]))
    use_bf16 = bool(p.get("bf16", False)) and device.type == "cuda"
    optimizer = torch.optim.Adam(
        model.parameters(), lr=float(p["learning_rate"]), weight_decay=float(p.get("weight_decay", 0.0))
    )
    state = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": []}
    best_state = _to_cpu_state(model)
    if checkpoint_path is not None and checkpoint_path.exists():
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        best_state = ckpt["best_state"]
        state = ckpt["state"]
        _set_rng_state(ckpt["rng"])
        logger.info("resuming %s from epoch %d (%s)", model.architecture, state["epoch"], checkpoint_path)

    num_batches = (len(inputs) + batch_size - 1) // batch_size
    while state["epoch"] < epochs and not (patience is not None and state["bad_epochs"] >= int(patience)):
        epoch = state["epoch"] + 1
        start_time = time.perf_counter()
        model.train()
        order = np.random.default_rng(seed + epoch).permutation(len(inputs))
        sums: dict[str, torch.Tensor | float] = {}
        for b in progress(range(num_batches), desc=f"epoch {epoch}", leave=False):
            idx = order[b * batch_size : (b + 1) * batch_size]
            x, y = inputs[idx], targets[idx]
            width = max(int((x > 0).sum(axis=1).max()), 1)  # right padding: trim the all-zero tail
            batch = {
                "item_seq": torch.from_numpy(x[:, :width]).to(device),
                "target_seq": torch.from_numpy(y[:, :width]).to(device),
            }
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                parts = model.training_step(batch)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            if p.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(p["grad_clip"]))
            optimizer.step()
            for k, v in parts.items():  # summed on the device: no host sync per batch
                sums[k] = sums.get(k, 0.0) + v.detach().float()
        # Validation in full precision: bf16 scores would create ties, which the pessimistic rank penalises.
        ranks = rank_targets(
            model, valid_histories, valid_targets, model.max_len,
            int(p.get("eval_batch_size", 512)), device=device, desc="validation",
        )  # fmt: skip
        valid = summarize(ranks, ks)
        if metric not in valid:
            raise ValueError(f"early_stopping.metric {metric!r} is not one of {sorted(valid)}")
        secs = time.perf_counter() - start_time
        parts_mean = {k: float(v) / max(num_batches, 1) for k, v in sums.items()}
        state["history"].append({"epoch": epoch, "loss": parts_mean, "valid": valid, "seconds": secs})
        if valid[metric] > state["best_score"]:
            state.update(best_score=valid[metric], best_epoch=epoch, bad_epochs=0)
            best_state = _to_cpu_state(model)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        _log_epoch(epoch, epochs, parts_mean, valid, secs)
        if checkpoint_path is not None:
            _atomic_torch_save(
                {
                    "model": _to_cpu_state(model),
                    "optimizer": optimizer.state_dict(),
                    "best_state": best_state,
                    "state": state,
                    "rng": _rng_state(),
                },
                checkpoint_path,
            )
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
    }


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
    device = resolve_device(training_params.get("device", "auto"))
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
    folder, wait_s = (ckpt.parent if ckpt else None), training_params.get("lock_wait_s", 0)
    with folder_lock(folder, wait_s, "training checkpoint folder", "training.lock_wait_s"):
        history = fit(
            model, inputs, targets, valid_h, valid_t, training_params, seed, ckpt, device, on_epoch_end
        )
        if ckpt is not None and not training_params.get("keep_checkpoint", False):
            shutil.rmtree(ckpt.parent, ignore_errors=True)
    history.update(
        architecture=name,
        seed=seed,
        device=str(device),
        num_windows=len(inputs),
        total_seconds=time.perf_counter() - started,
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
