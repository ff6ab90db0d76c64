"""Train one model: windows, device, model, resumable checkpoint folder, the loop, the artifact.

:func:`train_model` is what the ``training`` pipeline's node, ``compare``, ``tune`` and the benchmarks call.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from maf_pipeline.devices import resolve_device
from maf_pipeline.locks import folder_lock
from maf_pipeline.model_inputs import ModelInputs
from maf_pipeline.models import SequentialRecommender, build_model, feature_tables
from maf_pipeline.parameters import filled, filled_model

from .batching import training_windows
from .checkpoints import NON_SEMANTIC, fingerprint, to_cpu_state
from .ddp import init_distributed
from .loop import fit, seed_everything

logger = logging.getLogger(__name__)


def training_device(training_params: dict[str, Any], rank: int, size: int) -> torch.device:
    """``training.device``; under ``torchrun`` on CUDA one GPU per rank (its ``LOCAL_RANK``)."""
    device = resolve_device(training_params["device"])
    if size > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    return device


def model_inputs(
    train_sequences: pd.DataFrame, valid_sequences: pd.DataFrame, max_len: int, objective: str
) -> dict[str, Any]:
    """Training windows and the validation histories and targets."""
    histories = [np.asarray(s, dtype=np.int64) for s in train_sequences["items"]]
    inputs, targets = training_windows(histories, max_len, objective)
    valid_h = [np.asarray(h, dtype=np.int64) for h in valid_sequences["history"]]
    valid_t = valid_sequences["target"].to_numpy(dtype=np.int64)
    if not len(inputs) or not len(valid_t):
        raise ValueError("no training targets or no validation users: check the sequences pipeline output")
    # each validation user's earlier items: all their training items (the history is cut to max_len)
    by_user = dict(zip(train_sequences["user_idx"], train_sequences["items"], strict=True))
    empty = np.empty(0, dtype=np.int64)
    earlier = [np.asarray(by_user.get(u, empty), dtype=np.int64) for u in valid_sequences["user_idx"]]
    return {"inputs": inputs, "targets": targets, "valid_histories": valid_h, "valid_targets": valid_t,
            "valid_earlier": earlier}  # fmt: skip


def checkpoint_file(
    name: str, model: SequentialRecommender, features: dict[str, torch.Tensor], data: dict[str, Any],
    model_params: dict[str, Any], training_params: dict[str, Any], seed: int, max_len: int,
) -> tuple[Path | None, str]:  # fmt: skip
    """``checkpoint_dir/<architecture>/<key>/checkpoint.pt`` (None without a folder) and the key: a hash of
    the configuration, the seed and the data, so only the same run resumes from it."""
    used = {k: v for k, v in features.items() if k in getattr(model, "modalities", ())}
    semantic = {k: v for k, v in training_params.items() if k not in NON_SEMANTIC}
    key = fingerprint(
        model_params, semantic, seed, max_len, model.num_items, data["inputs"], data["targets"],
        data["valid_targets"], used,
    )  # fmt: skip
    folder = training_params["checkpoint_dir"]
    return (Path(folder) / name / key / "checkpoint.pt" if folder else None), key


def artifact(
    model: SequentialRecommender, name: str, model_params: dict[str, Any], max_len: int, seed: int,
    history: dict[str, Any], key: str, features: dict[str, torch.Tensor],
) -> dict[str, Any]:  # fmt: skip
    """The best state dict plus ``__metadata__`` (architecture, config, sizes, best epoch, seed, dims)."""
    used = {k: v for k, v in features.items() if k in getattr(model, "modalities", ())}
    out: dict[str, Any] = to_cpu_state(model)
    out["__metadata__"] = {
        "architecture": name,
        "config": model_params,
        "num_items": model.num_items,
        "max_len": max_len,
        "best_epoch": history["best_epoch"],
        "seed": seed,
        "feature_dims": {k: int(v.shape[1]) for k, v in used.items()},
        "checkpoint_key": key,
    }
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
    if not model_params.get("architecture"):
        raise ValueError("the model parameter block needs an 'architecture' key (e.g. maf, sasrec)")
    # the schema's defaults for keys a library caller omits (a Kedro run's blocks are complete already)
    model_params, training_params = filled_model(model_params), filled("training", training_params)
    name = model_params["architecture"]
    max_len, seed = int(max_len), int(seed)
    rank, size = init_distributed(training_params)
    device = training_device(training_params, rank, size)
    if training_params["num_threads"]:
        torch.set_num_threads(int(training_params["num_threads"]))
    features = feature_tables(image_features, text_features, category_features)
    data = model_inputs(train_sequences, valid_sequences, max_len, training_params["objective"])
    seed_everything(seed)
    num_items = int(item_index["item_idx"].max())
    model = build_model(name, num_items, max_len, model_params, features).to(device)
    ckpt, key = checkpoint_file(name, model, features, data, model_params, training_params, seed, max_len)
    logger.info(
        "training %s: %s parameters, %d items, %d windows (%s), %d valid users, device %s",
        name, f"{sum(p.numel() for p in model.parameters()):,}", num_items, len(data["inputs"]),
        training_params["objective"], len(data["valid_targets"]), device,
    )  # fmt: skip
    # one run at a time on a checkpoint folder: a second fails naming the first, or waits lock_wait_s
    # (under DDP the ranks are one run: rank 0 holds the lock and writes)
    folder, wait_s = (ckpt.parent if ckpt and rank == 0 else None), training_params["lock_wait_s"]
    with folder_lock(folder, wait_s, "training checkpoint folder", "training.lock_wait_s"):
        history = fit(
            model, data["inputs"], data["targets"], data["valid_histories"], data["valid_targets"],
            training_params, seed, ckpt, device, on_epoch_end, on_validation, data["valid_earlier"],
        )  # fmt: skip
        if ckpt is not None and rank == 0 and not training_params["keep_checkpoint"]:
            shutil.rmtree(ckpt.parent, ignore_errors=True)
    resumed = sum(e["seconds"] for e in history["epochs"][: history["resumed_epochs"]])
    # a resumed run's wall time includes its earlier processes' epochs, not only this process
    history.update(architecture=name, seed=seed, device=str(device), num_windows=len(data["inputs"]),
                   world_size=size, total_seconds=time.perf_counter() - started + resumed)  # fmt: skip
    return artifact(model, name, model_params, max_len, seed, history, key, features), history


def train_on(
    inputs: ModelInputs,
    model_params: dict[str, Any],
    training_params: dict[str, Any],
    max_len: int,
    seed: int,
    on_epoch_end: Callable[[int], None] | None = None,
    on_validation: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`train_model` on bundled :class:`~maf_pipeline.model_inputs.ModelInputs` (compare, tune, the
    benchmarks: many models on the same inputs)."""
    return train_model(
        inputs.train_sequences, inputs.valid_sequences, inputs.item_index, *inputs.features, model_params,
        training_params, max_len, seed, on_epoch_end, on_validation,
    )  # fmt: skip
