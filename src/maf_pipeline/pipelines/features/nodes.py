"""Feature nodes: one table per modality aligned with the item index (row 0 = padding, row i = item_idx i).

Image and text encodings are cached per item and encoder configuration, so after a data-filter change only
items never seen before are encoded. Each table carries its provenance (weights used, missing items, cache
hits, throughput) in ``__metadata__``; ``build_features_manifest`` gathers it for reporting.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pandas as pd
import torch

from maf_pipeline.datasets.embeddings import ItemEmbeddings
from maf_pipeline.devices import resolve_device
from maf_pipeline.locks import folder_lock
from maf_pipeline.progress import progress

from .encoders import (
    autocast,
    build_image_encoder,
    build_text_encoder,
    decode_rgb,
    effective_text_settings,
    image_feature_dim,
    image_transform,
    length_sorted_batches,
    pool,
    resolve_image_weights,
    resolve_text_weights,
    text_feature_dim,
)
from .stores import CacheTable, FeatureCache, ImageFolder, settings_hash

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# An encoder loads its model, then returns an iterator of (item ids, their feature rows, ids it could not
# encode), batch by batch; the model load is thus kept out of the measured throughput.
EncodeFn = Callable[[list[str]], Iterator[tuple[list[str], torch.Tensor, list[str]]]]


def ordered_item_ids(item_index: pd.DataFrame) -> list[str]:
    """Item ids in item_idx order, after checking that item_idx is exactly 1..N (0 is padding)."""
    index = item_index.sort_values("item_idx")
    idx = index["item_idx"].to_numpy()
    if len(idx) and (idx[0] != 1 or (idx[1:] - idx[:-1] != 1).any()):
        raise ValueError("item_index.item_idx must be contiguous 1..N")
    if index["item_id"].duplicated().any():
        raise ValueError("item_index has duplicate item_id values")
    return index["item_id"].astype(str).tolist()


def precomputed_table(
    modality: str, item_ids: list[str], embeddings: ItemEmbeddings | None, storage_dtype: str
) -> dict[str, Any]:
    """A feature table from precomputed vectors: row i = item_idx i's vector, row 0 and items without a
    vector zeros (counted and logged); ``__metadata__`` records the file, its sha256, dims and missing."""
    if embeddings is None:
        raise ValueError(
            f"the {modality} modality's source is 'file' but the catalog's {modality}_embeddings has no "
            "filepath: point it at the precomputed vectors (maf_pipeline.datasets.EmbeddingFileDataset)"
        )
    row = {item: n for n, item in enumerate(embeddings.ids)}
    positions = [row.get(i, -1) for i in item_ids]
    have = torch.tensor([p >= 0 for p in positions], dtype=torch.bool)
    features = torch.zeros(len(item_ids) + 1, embeddings.dim, dtype=_storage_dtype(storage_dtype))
    if have.any():
        take = torch.tensor([p for p in positions if p >= 0], dtype=torch.long)
        vectors = torch.from_numpy(embeddings.vectors)[take].to(features.dtype)
        features[1:][have] = vectors
    missing = [i for i, p in zip(item_ids, positions, strict=True) if p < 0]
    if missing:
        logger.warning(
            "%s features from %s: %d of %d items have no vector (zero rows), e.g. %s",
            modality, embeddings.source.get("file"), len(missing), len(item_ids), missing[:5],
        )  # fmt: skip
    logger.info(
        "%s features from %s: %d items x %d dims, %d vectors of the file unused",
        modality, embeddings.source.get("file"), len(item_ids), embeddings.dim,
        len(embeddings.ids) - (len(item_ids) - len(missing)),
    )  # fmt: skip
    meta = {
        "modality": modality,
        "encoder": "precomputed",
        "weights": None,
        "source": dict(embeddings.source),
        "settings": {"source": "file", "storage_dtype": storage_dtype},
        "num_items": len(item_ids),
        "dim": embeddings.dim,
        "missing": len(missing),
        "missing_examples": missing[:20],
    }
    return {"features": features, "__metadata__": meta}


def _fingerprint(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _storage_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"storage_dtype must be float32 or float16, not {name!r}")
    return _DTYPES[name]


def _encode_with_cache(
    modality: str,
    item_ids: Sequence[str],
    fingerprints: dict[str, str],
    settings: dict[str, Any],
    feature_cache: FeatureCache,
    cache_params: dict[str, Any],
    encode: EncodeFn,
    dim: Callable[[], int],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Assemble the ``(N + 1, dim)`` table from cached rows and fresh encodings (cached as they come).

    ``fingerprints`` holds the items that have content (a hash of it, part of the cache key); the rest are
    missing and stay zero rows.
    """
    table = feature_cache.table(modality, settings) if cache_params["enabled"] else None
    lock = folder_lock(
        None if table is None else table.directory,
        cache_params["lock_wait_s"],
        what=f"{modality} feature cache",
        parameter="features.cache.lock_wait_s",
    )
    with lock:
        return _encode_cached(modality, item_ids, fingerprints, table, cache_params, encode, dim, dtype)


def _encode_missing(
    modality: str,
    todo: list[str],
    fingerprints: dict[str, str],
    table: CacheTable | None,
    cache_params: dict[str, Any],
    encode: EncodeFn,
    dtype: torch.dtype,
) -> tuple[dict[str, torch.Tensor], list[str], float]:
    """Encode ``todo`` batch by batch, appending every ``flush_every`` rows to the cache table (and the rest
    when interrupted: finished rows are kept for the next run); the rows, the ids that failed, the seconds."""
    rows: dict[str, torch.Tensor] = {}
    failed: list[str] = []
    pending: tuple[list[str], list[torch.Tensor]] = ([], [])
    flush_every = int(cache_params["flush_every"])

    def flush() -> None:
        if table is not None and pending[0]:
            table.append(pending[0], [fingerprints[i] for i in pending[0]], torch.cat(pending[1]))
        pending[0].clear()
        pending[1].clear()

    start = time.perf_counter()
    if not todo:
        return rows, failed, 0.0
    batches = encode(todo)  # loads the model: kept out of the measured time
    start = time.perf_counter()
    try:
        with progress(total=len(todo), desc=f"{modality} features", unit="item") as bar:
            for ids, feats, bad in batches:
                feats = feats.to("cpu", dtype)
                failed.extend(bad)
                if ids:
                    rows.update(zip(ids, feats, strict=True))
                    pending[0].extend(ids)
                    pending[1].append(feats)
                if len(pending[0]) >= flush_every:
                    flush()
                bar.update(len(ids) + len(bad))
    finally:  # also when interrupted: every finished row is kept for the next run
        flush()
    return rows, failed, time.perf_counter() - start


def _assemble(
    item_ids: Sequence[str], rows: dict[str, torch.Tensor], dim: Callable[[], int], dtype: torch.dtype
) -> tuple[torch.Tensor, list[str]]:
    """The ``(N + 1, dim)`` table in item_idx order (row 0 and rowless items zero) and the missing ids."""
    width = next(iter(rows.values())).shape[0] if rows else dim()
    features = torch.zeros(len(item_ids) + 1, width, dtype=dtype)
    missing = []
    for pos, item_id in enumerate(item_ids, start=1):
        row = rows.get(item_id)
        if row is None:
            missing.append(item_id)
        else:
            features[pos] = row
    return features, missing


def _encode_cached(
    modality: str,
    item_ids: Sequence[str],
    fingerprints: dict[str, str],
    table: CacheTable | None,
    cache_params: dict[str, Any],
    encode: EncodeFn,
    dim: Callable[[], int],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The body of :func:`_encode_with_cache`, run while this run holds the cache table's lock."""
    present = [i for i in item_ids if i in fingerprints]
    hits = table.lookup(present, [fingerprints[i] for i in present]) if table is not None else {}
    todo = [i for i in present if i not in hits]
    logger.info(
        "%s features: %d items, %d with content, %d from the cache, %d to encode",
        *(modality, len(item_ids), len(present), len(hits), len(todo)),
    )
    rows: dict[str, torch.Tensor] = {k: v.to(dtype) for k, v in hits.items()}
    new_rows, failed, seconds = _encode_missing(
        modality, todo, fingerprints, table, cache_params, encode, dtype
    )
    rows.update(new_rows)
    encoded = len(todo) - len(failed)
    rate = encoded / seconds if seconds > 0 else 0.0
    if todo:
        logger.info(
            "%s features: encoded %d items in %.1f s (%.2f items/s)", modality, encoded, seconds, rate
        )
    if failed:
        logger.warning("%s features: %d items could not be encoded and are zero rows", modality, len(failed))
    features, missing = _assemble(item_ids, rows, dim, dtype)
    width = features.shape[1]
    stats = {
        "num_items": len(item_ids),
        "dim": width,
        "missing": len(missing),
        "missing_examples": missing[:20],
        "failed": len(failed),
        "cache_hits": len(hits),
        "encoded": encoded,
        "seconds": round(seconds, 3),
        "items_per_s": round(rate, 3),
        "cache_enabled": bool(cache_params["enabled"]),
    }
    if missing:
        logger.warning(
            "%s features: %d of %d items are missing (zero rows)", modality, len(missing), len(item_ids)
        )
    return features, stats


def no_images_table(item_ids: list[str], storage_dtype: str) -> dict[str, Any]:
    """The image table of data without images: no columns, so the modality counts as absent."""
    features = torch.zeros(len(item_ids) + 1, 0, dtype=_storage_dtype(storage_dtype))
    meta = {"modality": "image", "encoder": None, "weights": None, "settings": {"source": "none"},
            "num_items": len(item_ids), "dim": 0, "missing": len(item_ids)}  # fmt: skip
    return {"features": features, "__metadata__": meta}


def stored_image_fingerprints(
    item_ids: list[str], image_availability: pd.DataFrame, image_store: ImageFolder
) -> dict[str, str]:
    """Content fingerprints of the indexed items' stored images (the cache key); items marked ``has_image``
    but missing from the store are counted in a warning and treated as imageless."""
    available = set(
        image_availability.loc[image_availability["has_image"].astype(bool), "item_id"].astype(str)
    )
    fingerprints = {}
    for item_id in item_ids:
        if item_id in available and (fp := image_store.fingerprint(item_id)) is not None:
            fingerprints[item_id] = fp
    lost = len(available & set(item_ids)) - len(fingerprints)
    if lost:
        logger.warning("%d items marked has_image are not in the image store (treated as missing)", lost)
    return fingerprints


def encode_images(
    item_index: pd.DataFrame,
    image_availability: pd.DataFrame,
    image_store: ImageFolder,
    feature_cache: FeatureCache,
    params: dict[str, Any],
    cache_params: dict[str, Any],
    seed: int,
    image_embeddings: ItemEmbeddings | None = None,
    image_source: str = "local",
) -> dict[str, Any]:
    """VGG fc7 features of each indexed item's image (paper: pre-trained VGG, d_v = 4096); zeros if none.

    With ``features.images.source: file`` the table is the precomputed ``image_embeddings`` instead; with
    ``none`` (data without images) it has no columns.
    """
    item_ids = ordered_item_ids(item_index)
    if image_source == "file":
        return precomputed_table("image", item_ids, image_embeddings, params["storage_dtype"])
    if image_source == "none":
        return no_images_table(item_ids, params["storage_dtype"])
    fingerprints = stored_image_fingerprints(item_ids, image_availability, image_store)
    choice = resolve_image_weights(params)
    device = resolve_device(params["device"])
    dtype = _storage_dtype(params["storage_dtype"])
    settings = {
        "encoder": "vgg-fc7",
        "arch": params["arch"],
        "weights": choice.identity,
        "seed": seed if choice.location is None else None,  # random init: the seed decides the weights
        "input_size": int(params["input_size"]),
        "resize_size": params["resize_size"],
        "precision": params["precision"],
        "storage_dtype": params["storage_dtype"],
    }

    def encode(todo: list[str]) -> Iterator[tuple[list[str], torch.Tensor, list[str]]]:
        loaded = time.perf_counter()
        model = build_image_encoder(params["arch"], choice, seed).to(device)
        took = time.perf_counter() - loaded
        logger.info("Loaded %s (%s weights) in %.1f s on %s", params["arch"], choice.source, took, device)
        transform = image_transform(int(params["input_size"]), params["resize_size"])
        loader = torch.utils.data.DataLoader(
            _ImageRows(image_store, todo, transform, int(params["input_size"])),
            batch_size=int(params["batch_size"]),
            num_workers=int(params["num_workers"]),
            collate_fn=_collate_images,
            pin_memory=device.type == "cuda",
        )

        def batches() -> Iterator[tuple[list[str], torch.Tensor, list[str]]]:
            with torch.inference_mode():
                for ids, images, bad in loader:
                    if not ids:
                        yield [], torch.zeros(0), bad
                        continue
                    with autocast(device, params["precision"]):
                        out = model(images.to(device, non_blocking=True))
                    yield ids, out.float(), bad

        return batches()

    dim = functools.partial(image_feature_dim, params["arch"])
    features, stats = _encode_with_cache(
        "image", item_ids, fingerprints, settings, feature_cache, cache_params, encode, dim, dtype
    )
    meta = {
        "modality": "image",
        "encoder": f"{params['arch']}-fc7",
        "weights": choice.as_dict(),
        "settings": settings,
        "settings_hash": settings_hash(settings),
        "device": str(device),
        **stats,
    }
    return {"features": features, "__metadata__": meta}


class _ImageRows(torch.utils.data.Dataset):
    """Decoded, transformed images of the given items; an undecodable one comes back as None (counted)."""

    def __init__(self, store: ImageFolder, item_ids: list[str], transform: Callable, size: int) -> None:
        self.store, self.item_ids, self.transform, self.size = store, item_ids, transform, size

    def __len__(self) -> int:
        return len(self.item_ids)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None]:
        item_id = self.item_ids[i]
        try:
            data = self.store.read(item_id)
            return item_id, None if data is None else self.transform(decode_rgb(data, self.size))
        except Exception as exc:  # a corrupt file becomes a missing image
            logger.warning("Image of item %s could not be decoded (%s)", item_id, exc)
            return item_id, None


def _collate_images(
    batch: list[tuple[str, torch.Tensor | None]],
) -> tuple[list[str], torch.Tensor, list[str]]:
    good = [(i, t) for i, t in batch if t is not None]
    bad = [i for i, t in batch if t is None]
    tensor = torch.stack([t for _, t in good]) if good else torch.zeros(0)
    return [i for i, _ in good], tensor, bad


def item_texts(items: pd.DataFrame) -> dict[str, str]:
    """Text per item: ``text`` (title + description), or the title when that is blank; blank ones left out."""
    text = (
        items["text"].fillna("").astype(str).str.strip()
        if "text" in items
        else pd.Series("", index=items.index)
    )
    if "title" in items:
        text = text.where(text != "", items["title"].fillna("").astype(str).str.strip())
    keep = text != ""
    return dict(zip(items.loc[keep, "item_id"].astype(str), text[keep], strict=True))


# 64 characters per token: natural text averages 4-6 characters per WordPiece token, so the cut leaves the
# tokens kept unchanged (only runs of very long unbroken strings, each one [UNK], could lose tokens)
CHARS_PER_TOKEN = 64


def cap_texts(texts: dict[str, str], max_tokens: int) -> tuple[dict[str, str], int]:
    """Texts cut to ``max_tokens * 64`` characters before tokenising (a 52 MB description no longer takes
    minutes and gigabytes to tokenise and then cut to ``max_tokens``), and how many were cut (logged)."""
    limit = max_tokens * CHARS_PER_TOKEN
    long = [i for i, t in texts.items() if len(t) > limit]
    if long:
        logger.info("text features: %d texts cut to %d characters before tokenising (e.g. %s)",
                    len(long), limit, long[:3])  # fmt: skip
    return {i: (t[:limit] if len(t) > limit else t) for i, t in texts.items()}, len(long)


def encode_texts(
    item_index: pd.DataFrame,
    filtered_items: pd.DataFrame,
    feature_cache: FeatureCache,
    params: dict[str, Any],
    cache_params: dict[str, Any],
    seed: int,
    text_embeddings: ItemEmbeddings | None = None,
) -> dict[str, Any]:
    """BERT sentence vectors of each indexed item's title + description (paper: BERT, d_t = 768).

    With ``features.text_encoder.source: file`` the table is the precomputed ``text_embeddings`` instead.
    """
    item_ids = ordered_item_ids(item_index)
    if params["source"] == "file":
        return precomputed_table("text", item_ids, text_embeddings, params["storage_dtype"])
    texts, capped = cap_texts(item_texts(filtered_items), int(params["max_tokens"]))
    fingerprints = {i: _fingerprint(texts[i]) for i in item_ids if i in texts}
    choice = resolve_text_weights(params)
    used = effective_text_settings(params, choice)
    device = resolve_device(params["device"])
    dtype = _storage_dtype(params["storage_dtype"])
    settings = {
        "encoder": "transformer",
        **used,
        "weights": choice.identity,
        "seed": seed if choice.location is None else None,
        "precision": params["precision"],
        "storage_dtype": params["storage_dtype"],
    }

    def encode(todo: list[str]) -> Iterator[tuple[list[str], torch.Tensor, list[str]]]:
        loaded = time.perf_counter()
        model, tokenizer = build_text_encoder(params["model_name"], choice, seed)
        model.to(device)
        took = time.perf_counter() - loaded
        logger.info("Loaded %s (%s weights) in %.1f s on %s", used["model"], choice.source, took, device)
        accepted = set(tokenizer.model_input_names)

        def batches() -> Iterator[tuple[list[str], torch.Tensor, list[str]]]:
            token_ids = tokenizer([texts[i] for i in todo], truncation=True, max_length=used["max_tokens"])
            sorted_batches = length_sorted_batches(
                token_ids["input_ids"], int(params["batch_size"]), tokenizer.pad_token_id
            )
            with torch.inference_mode():
                for positions, batch in sorted_batches:
                    batch = {k: v.to(device) for k, v in batch.items() if k in accepted}
                    with autocast(device, params["precision"]):
                        out = pool(model(**batch), batch["attention_mask"], used["pooling"]).float()
                    if used["normalize"]:
                        out = torch.nn.functional.normalize(out, dim=-1)
                    yield [todo[p] for p in positions], out, []

        return batches()

    dim = functools.partial(text_feature_dim, params["model_name"], choice)
    features, stats = _encode_with_cache(
        "text", item_ids, fingerprints, settings, feature_cache, cache_params, encode, dim, dtype
    )
    meta = {
        "modality": "text",
        "texts_capped": capped,
        "encoder": used["model"],
        "weights": choice.as_dict(),
        "settings": settings,
        "settings_hash": settings_hash(settings),
        "device": str(device),
        **stats,
    }
    return {"features": features, "__metadata__": meta}


def _labels(value: Any) -> list[str]:
    if value is None or isinstance(value, float):
        return []
    labels = [value] if isinstance(value, str) else list(value)
    # NFC: one vocabulary entry per label, however the items table spelled it (composed or decomposed)
    cleaned = (unicodedata.normalize("NFC", str(v).strip()) for v in labels if v is not None)
    return list(dict.fromkeys(label for label in cleaned if label))


def encode_categories(
    item_index: pd.DataFrame, filtered_items: pd.DataFrame, params: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Multi-hot category vectors (paper: multi-label form, d_c = vocabulary size) and the vocabulary.

    A label counts once per item; labels on fewer than ``min_frequency`` items are dropped, and so is a label
    every item has (it carries no information, e.g. the top-level "Clothing, Shoes & Jewelry").
    """
    item_ids = ordered_item_ids(item_index)
    by_item = dict(zip(filtered_items["item_id"].astype(str), filtered_items["categories"], strict=True))
    labels = {i: _labels(by_item.get(i)) for i in item_ids}
    freq = Counter(label for item_labels in labels.values() for label in item_labels)
    min_freq = int(params["min_frequency"])
    universal = sorted(k for k, n in freq.items() if n == len(item_ids)) if params["drop_universal"] else []
    rare = sorted(k for k, n in freq.items() if n < min_freq)
    kept = sorted((k for k in freq if k not in set(universal) | set(rare)), key=lambda k: (-freq[k], k))
    if params["max_labels"]:
        kept = kept[: int(params["max_labels"])]
    column = {label: j for j, label in enumerate(kept)}
    features = torch.zeros(len(item_ids) + 1, len(kept), dtype=_storage_dtype(params["storage_dtype"]))
    for pos, item_id in enumerate(item_ids, start=1):
        for label in labels[item_id]:
            if label in column:
                features[pos, column[label]] = 1.0
    missing = [i for pos, i in enumerate(item_ids, start=1) if not features[pos].any()]
    if not kept:
        logger.warning(
            "Category features: no label survives (min_frequency=%d, universal dropped): dim 0", min_freq
        )
    logger.info(
        "Category features: %d labels kept of %d (dropped %d universal, %d below min_frequency=%d); "
        "%d items without any kept label",
        *(len(kept), len(freq), len(universal), len(rare), min_freq, len(missing)),
    )
    vocabulary = {
        "labels": kept,
        "frequency": {k: freq[k] for k in kept},
        "dropped_universal": universal,
        "dropped_rare": len(rare),
        "min_frequency": min_freq,
    }
    meta = {
        "modality": "category",
        "encoder": "multi-hot",
        "weights": None,
        "settings": {
            "min_frequency": min_freq,
            "drop_universal": bool(params["drop_universal"]),
            "max_labels": params["max_labels"],
        },
        "num_items": len(item_ids),
        "dim": len(kept),
        "missing": len(missing),
        "missing_examples": missing[:20],
    }
    return {"features": features, "__metadata__": meta}, vocabulary


def build_features_manifest(
    image_features: dict[str, Any],
    text_features: dict[str, Any],
    category_features: dict[str, Any],
    category_vocabulary: dict[str, Any],
    image_availability: pd.DataFrame,
    item_index: pd.DataFrame,
) -> dict[str, Any]:
    """One JSON record of each feature table (encoder, weights actually used, dims, missing, cache hits).

    Also checks the contract every consumer relies on: shape ``(num_items + 1, dim)`` and a zero padding row.
    """
    num_items = len(item_index)
    manifest: dict[str, Any] = {"num_items": num_items, "modalities": {}, "warnings": []}
    for name, table in (("image", image_features), ("text", text_features), ("category", category_features)):
        feats = table["features"]
        meta = dict(table.get("__metadata__") or {})
        if feats.shape[0] != num_items + 1:
            raise ValueError(
                f"{name}_features has {feats.shape[0]} rows, expected num_items + 1 = {num_items + 1}"
            )
        if feats.shape[1] and bool(feats[0].any()):
            raise ValueError(f"{name}_features row 0 (padding) is not zero")
        meta.update(shape=list(feats.shape), dtype=str(feats.dtype).removeprefix("torch."))
        manifest["modalities"][name] = meta
        weights = meta.get("weights") or {}
        if weights.get("fallback"):
            used = (
                "a randomly initialised encoder"
                if weights.get("source") == "random"
                else weights.get("identity")
            )
            manifest["warnings"].append(f"{name}: no pretrained weights found; features come from {used}")
        elif weights.get("source") == "random":
            manifest["warnings"].append(f"{name}: randomly initialised encoder (weights: none)")
    if len(category_vocabulary["labels"]) != category_features["features"].shape[1]:
        raise ValueError("category_vocabulary and category_features disagree on the number of labels")
    manifest["image_availability"] = {
        "items": len(image_availability),
        "with_image": int(image_availability["has_image"].sum()),
        "status": {k: int(v) for k, v in image_availability["status"].value_counts().sort_index().items()},
    }
    for warning in manifest["warnings"]:
        logger.warning("Features manifest: %s", warning)
    return manifest
