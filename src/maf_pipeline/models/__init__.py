"""Sequential recommenders: a registry from architecture name to class, helpers to build and restore them."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

from .base import SequentialRecommender
from .bert4rec import BERT4Rec
from .caser import Caser
from .fdsa import FDSA
from .gru4rec import GRU4Rec
from .maf import MAF
from .pop import Popularity
from .sasrec import SASRec
from .sasrecf import SASRecF

logger = logging.getLogger(__name__)

MODELS: dict[str, type[SequentialRecommender]] = {"maf": MAF, "sasrec": SASRec}
# Baselines of the paper's Table 2 (issue 5).
MODELS.update(gru4rec=GRU4Rec, caser=Caser, bert4rec=BERT4Rec, sasrecf=SASRecF, fdsa=FDSA)


def empty_modalities(features: dict[str, torch.Tensor] | None) -> list[str]:
    """Names of the given feature tables that carry nothing (no columns or all zeros: interaction-only)."""
    return sorted(
        name for name, t in (features or {}).items() if t.dim() != 2 or t.size(1) == 0 or not bool(t.any())
    )


def build_model(
    name: str,
    num_items: int,
    max_len: int,
    model_params: dict[str, Any],
    features: dict[str, torch.Tensor] | None = None,
) -> SequentialRecommender:
    """Instantiate architecture ``name`` from its parameter block (``architecture`` key ignored).

    Feature tables are passed only to models that declare them in ``feature_names``. A table that is given but
    empty (no columns or all zeros, e.g. images of an interaction-only data set) counts as absent: the model's
    ``modalities`` drop it, with a warning, so models run with the modalities that exist.
    """
    if name not in MODELS:
        raise ValueError(f"unknown architecture {name!r}; registered: {sorted(MODELS)}")
    cls = MODELS[name]
    config = {k: v for k, v in model_params.items() if k != "architecture"}
    if cls.feature_names:
        given = {k: v for k, v in (features or {}).items() if k in cls.feature_names}
        empty = empty_modalities(given)
        config["features"] = {k: v for k, v in given.items() if k not in empty}
        accepts = inspect.signature(cls).parameters.get("modalities")
        if empty and accepts is not None:
            requested = list(config.get("modalities", accepts.default) or ())
            kept = [m for m in requested if m not in empty]
            if kept != requested:
                logger.warning(
                    "%s: %s feature table(s) empty (no columns or all zeros): using modalities %s",
                    name, [m for m in requested if m in empty], kept,
                )  # fmt: skip
            config["modalities"] = kept
    try:
        return cls(num_items=num_items, max_len=max_len, **config)
    except TypeError as err:
        raise ValueError(f"bad parameters for {name!r}: {err}") from err


def feature_tables(
    image_features: dict[str, Any] | None,
    text_features: dict[str, Any] | None,
    category_features: dict[str, Any] | None,
) -> dict[str, torch.Tensor]:
    """The ``(N + 1, dim)`` tables of the three feature datasets by modality (missing ones left out)."""
    tables = {"image": image_features, "text": text_features, "category": category_features}
    return {name: t["features"] for name, t in tables.items() if t is not None and "features" in t}


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
    "FDSA",
    "MAF",
    "MODELS",
    "BERT4Rec",
    "Caser",
    "GRU4Rec",
    "Popularity",
    "SASRec",
    "SASRecF",
    "SequentialRecommender",
    "build_model",
    "empty_modalities",
    "feature_tables",
    "model_from_artifact",
]
