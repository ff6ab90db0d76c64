"""Sequential recommenders: a registry from architecture name to class, helpers to build and restore them."""

from __future__ import annotations

from typing import Any

import torch

from .base import SequentialRecommender
from .maf import MAF
from .pop import Popularity
from .sasrec import SASRec

MODELS: dict[str, type[SequentialRecommender]] = {"maf": MAF, "sasrec": SASRec}


def build_model(
    name: str,
    num_items: int,
    max_len: int,
    model_params: dict[str, Any],
    features: dict[str, torch.Tensor] | None = None,
) -> SequentialRecommender:
    """Instantiate architecture ``name`` from its parameter block (``architecture`` key ignored).

    Feature tables are passed only to models that declare them in ``feature_names``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown architecture {name!r}; registered: {sorted(MODELS)}")
    cls = MODELS[name]
    config = {k: v for k, v in model_params.items() if k != "architecture"}
    if cls.feature_names:
        config["features"] = {k: v for k, v in (features or {}).items() if k in cls.feature_names}
    try:
        return cls(num_items=num_items, max_len=max_len, **config)
    except TypeError as err:
        raise ValueError(f"bad parameters for {name!r}: {err}") from err


def model_from_artifact(
    artifact: dict[str, Any], features: dict[str, torch.Tensor] | None = None
) -> SequentialRecommender:
    """Rebuild a trained model from a ``<model>.trained_model`` artifact (state dict + ``__metadata__``)."""
    meta = artifact["__metadata__"]
    model = build_model(meta["architecture"], meta["num_items"], meta["max_len"], meta["config"], features)
    state = {k: v for k, v in artifact.items() if k != "__metadata__"}
    model.load_state_dict(state, strict=True)
    return model


__all__ = [
    "MAF",
    "MODELS",
    "Popularity",
    "SASRec",
    "SequentialRecommender",
    "build_model",
    "model_from_artifact",
]
