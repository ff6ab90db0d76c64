"""Preprocessing nodes: the paper's filters (date window, category subset, duplicates, multimodal
completeness, k-core) applied in order, each returning its output and its before/after counts.

Images are the one costly modality, so completeness and the k-core first use cheap image *candidates*
(``features.images.list_image_candidates``); images are fetched for the k-core survivors only, and
``filter_verified_images`` drops the failures and re-applies the k-core to the same fixed point.

Dtypes (kept from the ``interactions`` contract at every stage): ``user_id`` and ``item_id`` strings,
``rating`` float32, ``timestamp`` datetime64 UTC. Every stage keeps the rows of its input in their original
order (the raw file order), so later stable tie-breaks on equal timestamps are reproducible.
"""

from __future__ import annotations

import html
import logging
import unicodedata
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from maf_pipeline.parameters import filled

logger = logging.getLogger(__name__)

INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
OPTIONAL_COLUMNS = ["split"]  # a fixed split given by the input (benchmark files), kept for the sequences
MODALITIES = ("image", "text", "category")
DEDUP_KEEP = ("first", "last", "all")


class EmptyStageError(ValueError):
    """A preprocessing stage removed every interaction."""


# ----------------------------------------------------------------------------------------------- helpers
def _counts(interactions: pd.DataFrame) -> dict[str, int]:
    """Number of interactions, distinct users and distinct items."""
    return {
        "interactions": len(interactions),
        "users": int(interactions["user_id"].nunique()),
        "items": int(interactions["item_id"].nunique()),
    }


def _stage_report(
    stage: str, before: pd.DataFrame, after: pd.DataFrame, hint: str, **details: Any
) -> dict[str, Any]:
    """Before/after counts of one stage; raises :class:`EmptyStageError` when the stage emptied the data."""
    b, a = _counts(before), _counts(after)
    if a["interactions"] == 0:
        raise EmptyStageError(
            f"Preprocessing stage '{stage}' left no interactions (before it: {b['interactions']:,} "
            f"interactions, {b['users']:,} users, {b['items']:,} items). {hint}"
        )
    logger.info(
        "%s: %s -> %s interactions, %s -> %s users, %s -> %s items",
        stage,
        f"{b['interactions']:,}",
        f"{a['interactions']:,}",
        f"{b['users']:,}",
        f"{a['users']:,}",
        f"{b['items']:,}",
        f"{a['items']:,}",
    )
    return {
        "stage": stage,
        "before": b,
        "after": a,
        "removed_interactions": b["interactions"] - a["interactions"],
        **details,
    }


def _conform(interactions: pd.DataFrame) -> pd.DataFrame:
    """The contract columns with the contract dtypes (naive timestamps are taken to be UTC), and a given
    ``split`` column when the input has one."""
    missing = [c for c in INTERACTION_COLUMNS if c not in interactions.columns]
    if missing:
        raise ValueError(
            f"interactions lack the contract columns {missing}; got {list(interactions.columns)}"
        )
    optional = [c for c in OPTIONAL_COLUMNS if c in interactions.columns]
    df = interactions[INTERACTION_COLUMNS + optional].reset_index(drop=True)
    ts = df["timestamp"]
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = pd.to_datetime(ts)
        ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts
    return df.assign(
        user_id=df["user_id"].astype(str),
        item_id=df["item_id"].astype(str),
        rating=df["rating"].astype(np.float32),
        timestamp=ts.dt.tz_convert("UTC"),
    )


def _codes(ids: pd.Series) -> np.ndarray:
    """Integer codes of string ids (Arrow dictionary encoding: far faster than hashing pandas strings)."""
    encoded = pc.dictionary_encode(_arrow_strings(ids))
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _arrow_strings(values: Iterable[Any]) -> pa.Array:
    """Ids as one Arrow string array (pandas' Arrow-backed columns convert without copying)."""
    if not isinstance(values, pd.Series | pd.Index | np.ndarray | list):
        values = list(values)
    array = pa.array(values, from_pandas=True)
    array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    return array if array.type == pa.string() else pc.cast(array, pa.string())


def _timestamp_int(timestamps: pd.Series) -> np.ndarray:
    """UTC timestamps as int64 ticks (one unit per column), for sorting."""
    return np.asarray(timestamps.dt.tz_convert("UTC").values).view("int64")


def _normalise_label(label: Any) -> str:
    """Category label as compared by the category filter: HTML entities decoded, trimmed, case-folded, in
    Unicode NFC (the filter's own values too: ``Café`` typed decomposed matches the composed label)."""
    return unicodedata.normalize(
        "NFC", unicodedata.normalize("NFC", html.unescape(str(label))).strip().casefold()
    )


def _labels(value: Any) -> list[str]:
    """A ``categories`` cell (list, numpy array or missing) as a list of labels."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [str(v) for v in value]


def _non_blank(values: pa.Array) -> np.ndarray:
    """Per string: holds a non-whitespace character (vectorised ``bool(s.strip())``; null is blank)."""
    blank = pc.or_kleene(pc.equal(pc.utf8_length(values), 0), pc.utf8_is_space(values))
    return ~pc.fill_null(blank, True).to_numpy(zero_copy_only=False)


def _any_non_blank(lists: pa.ListArray) -> np.ndarray:
    """Per list of strings: at least one element holds a non-whitespace character."""
    flat = _non_blank(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists).to_numpy()
    return np.bincount(parents[flat], minlength=len(lists)) > 0


def isin(values: Iterable[Any], wanted: Iterable[Any]) -> np.ndarray:
    """Boolean mask: which ``values`` (ids, as strings) are in ``wanted``, hashed by Arrow.

    Not ``Series.isin``: for pandas' Arrow-backed strings it builds one Python scalar per wanted value
    (seconds for the 300k items of a real category), and ``Series.map`` goes through a slow indexer.
    """

    found = pc.is_in(_arrow_strings(values), value_set=_arrow_strings(wanted))
    return pc.fill_null(found, False).to_numpy(zero_copy_only=False)


def _label_lists(categories: pd.Series) -> pa.ListArray:
    """A ``categories`` column as Arrow lists of strings (cells: lists, numpy arrays or missing)."""
    try:
        return pa.array(categories, pa.list_(pa.string()), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):  # odd cells (numbers): the per-row path
        return pa.array(categories.map(_labels), pa.list_(pa.string()))


def _unique_items(items: pd.DataFrame, wanted: Iterable[str]) -> pd.DataFrame:
    """The rows of ``items`` whose id is in ``wanted``; ``items`` must have unique ids (the contract)."""
    if items["item_id"].duplicated().any():
        dup = items.loc[items["item_id"].duplicated(), "item_id"].iloc[0]
        raise ValueError(f"items must have unique item_id (ingestion collapses repeats); {dup!r} repeats")
    return items[isin(items["item_id"], wanted)].assign(item_id=lambda d: d["item_id"].astype(str))


# ------------------------------------------------------------------------------------------------ stages
def filter_date_window(
    interactions: pd.DataFrame, date_window: dict[str, Any] | None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Keep interactions inside ``date_window`` (inclusive, UTC; a null bound is open), the paper's 2016-2017.

    A bound without a time of day (``"2017-12-31"``) covers that whole day; one with a time is an exact
    instant. Ingestion already applies the window while reading; this stage re-checks it and records counts.
    """
    df = _conform(interactions)
    window = filled("date_window", date_window)  # None: no window (the schema's defaults)
    start, end = window["start"], window["end"]
    keep = np.ones(len(df), dtype=bool)
    ts = df["timestamp"]
    if start is not None:
        lo = pd.Timestamp(start)
        lo = lo.tz_localize("UTC") if lo.tz is None else lo.tz_convert("UTC")
        keep &= (ts >= lo).to_numpy()
    if end is not None:
        hi = pd.Timestamp(end)
        hi = hi.tz_localize("UTC") if hi.tz is None else hi.tz_convert("UTC")
        keep &= (ts < hi + pd.Timedelta(days=1) if hi == hi.normalize() else ts <= hi).to_numpy()
    out = df[keep].reset_index(drop=True)
    report = _stage_report(
        "date_window",
        df,
        out,
        "Widen or null params:date_window.",
        window={"start": None if start is None else str(start), "end": None if end is None else str(end)},
    )
    return out, report


def filter_categories(
    interactions: pd.DataFrame, items: pd.DataFrame, category_labels: list[str] | None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Keep interactions of items whose category path contains any of ``category_labels`` (null keeps all).

    Labels match whole path entries, case-insensitively, after decoding HTML entities (``&amp;``) and
    trimming: ``["Women"]`` matches ``Clothing, Shoes & Jewelry > Women > Dresses``, not ``Womens``. This is
    how the paper's Boys & Girls, Women and Men subsets of Clothing are selected. Items without metadata have
    no path and are dropped when a filter is set.
    """
    df = interactions.reset_index(drop=True)
    if not category_labels:
        report = _stage_report("category", df, df, "", labels=None, items_without_metadata=0)
        return df, report
    wanted = {_normalise_label(label) for label in category_labels}
    present = df["item_id"].unique()
    meta = _unique_items(items[["item_id", "categories"]], present)  # not the texts
    exploded = meta.explode("categories").dropna(subset=["categories"])
    raw_labels = exploded["categories"].astype(str)
    matching = [label for label in raw_labels.unique() if _normalise_label(label) in wanted]
    kept_items = exploded.loc[raw_labels.isin(matching), "item_id"].unique()
    out = df[isin(df["item_id"], kept_items)].reset_index(drop=True)
    no_meta = int((~isin(present, meta["item_id"])).sum())
    report = _stage_report(
        "category",
        df,
        out,
        f"No item's category path contains any of {list(category_labels)}; "
        "check preprocessing.category_labels against items.categories.",
        labels=list(category_labels),
        matched_labels=sorted(matching),
        items_without_metadata=no_meta,
    )
    return out, report


def deduplicate_interactions(interactions: pd.DataFrame, keep: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Collapse repeated (user, item) pairs to the ``first`` or ``last`` by time, or keep ``all`` of them.

    Ties in time are broken by the original row order (stable), so ``first`` of two same-day reviews is the
    one that came first in the file.
    """
    if keep not in DEDUP_KEEP:
        raise ValueError(f"preprocessing.dedup_keep must be one of {DEDUP_KEEP}, got {keep!r}")
    df = interactions.reset_index(drop=True)
    order = np.lexsort((np.arange(len(df)), _timestamp_int(df["timestamp"])))
    users, items = (_codes(df[c]) for c in ("user_id", "item_id"))
    pairs = (users * (int(items.max(initial=0)) + 1) + items)[order]  # one int64 key per (user, item)
    _, first = np.unique(pairs, return_index=True)  # position in time order of each pair's first row
    duplicate_rows = len(df) - len(first)
    if keep == "all":
        out = df
    else:
        if keep == "last":
            _, from_end = np.unique(pairs[::-1], return_index=True)
            first = len(pairs) - 1 - from_end
        out = df.iloc[np.sort(order[first])].reset_index(drop=True)
    report = _stage_report(
        "dedup",
        df,
        out,
        "Unexpected: deduplication keeps one row per pair.",
        keep=keep,
        duplicate_rows=duplicate_rows,
    )
    return out, report


def filter_multimodal_completeness(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    image_availability: pd.DataFrame,
    required_modalities: list[str],
    text_embeddings: Any = None,
    text_source: str = "encoder",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Drop interactions of items lacking any modality the run uses (the paper keeps items with all three).

    image: ``image_availability.has_image`` (absent = no image; with precomputed image vectors, a vector);
    text: non-blank ``items.text``, or a vector in ``text_embeddings`` when ``text_source`` is ``file``;
    category: at least one non-blank label in ``items.categories``. Items missing from ``items`` are always
    dropped and counted separately.
    """
    required = list(required_modalities or [])
    unknown = sorted(set(required) - set(MODALITIES))
    if unknown:
        raise ValueError(
            f"Unknown modalities {unknown} in preprocessing.required_modalities; use {MODALITIES}"
        )
    df = interactions.reset_index(drop=True)
    present = pd.Index(df["item_id"].unique())
    _unique_items(items[["item_id"]], ())  # the unique-id check
    # per-item flags over the items table itself (vectorised; no copy of the texts)
    ids = items["item_id"].astype(str).to_numpy()
    relevant = isin(ids, present)  # items that are reviewed here
    has_meta = isin(present, ids)
    keep = relevant.copy()
    lacking: dict[str, int] = {}
    for modality in required:
        if modality == "image":
            has = isin(ids, image_availability.loc[image_availability["has_image"].astype(bool), "item_id"])
        elif modality == "text" and text_source == "file":
            if text_embeddings is None:
                raise ValueError("features.text_encoder.source is 'file' but text_embeddings has no filepath")
            has = isin(ids, text_embeddings.ids)
        elif modality == "text":
            has = _non_blank(pa.array(items["text"], pa.string(), from_pandas=True))
        else:
            has = _any_non_blank(_label_lists(items["categories"]))
        lacking[modality] = int((relevant & ~has).sum())
        keep &= has
    ok = isin(present, ids[keep])
    out = df[isin(df["item_id"], present[ok])].reset_index(drop=True)
    missing_items = present[~has_meta]
    report = _stage_report(
        "completeness",
        df,
        out,
        f"No item has all of {required}; check image_availability and items, or relax "
        "preprocessing.required_modalities.",
        required_modalities=required,
        items_without_metadata=len(missing_items),
        interactions_without_metadata=int(isin(df["item_id"], missing_items).sum()),
        items_lacking=lacking,
    )
    return out, report


def _kcore(df: pd.DataFrame, user_k: int, item_k: int) -> tuple[pd.DataFrame, int]:
    """The rows of the largest subset where every user has >= ``user_k`` and every item >= ``item_k`` rows
    (iterated to a fixed point), in input order; also the number of iterations."""
    users, _ = pd.factorize(df["user_id"])
    items, _ = pd.factorize(df["item_id"])
    rows = np.arange(len(df))
    iterations = 0
    while True:
        iterations += 1
        u, i = users[rows], items[rows]
        keep = (np.bincount(u)[u] >= user_k) & (np.bincount(i)[i] >= item_k)
        logger.info(
            "k-core iteration %d: %s -> %s interactions", iterations, f"{len(rows):,}", f"{keep.sum():,}"
        )
        if keep.all():
            break
        rows = rows[keep]
        if len(rows) == 0:
            break
    return df.iloc[rows].reset_index(drop=True), iterations


def _bounds(k: int, user_k: int | None, item_k: int | None) -> tuple[int, int]:
    return (k if user_k is None else user_k), (k if item_k is None else item_k)


def kcore_filter(
    interactions: pd.DataFrame, k: int, user_k: int | None = None, item_k: int | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Iterative k-core: drop users with under ``user_k`` and items with under ``item_k`` interactions until
    nothing changes (both default to ``k``). The fixed point is the largest subset meeting both bounds.

    Counts are of interaction rows (with ``dedup_keep: all`` a repeated pair counts each time). In the chain
    this runs on image *candidates*; ``filter_verified_images`` finishes the job once images are fetched.
    """
    uk, ik = _bounds(k, user_k, item_k)
    df = interactions.reset_index(drop=True)
    out, iterations = _kcore(df, uk, ik)
    report = _stage_report(
        "kcore",
        df,
        out,
        f"No {uk}/{ik}-core exists; lower preprocessing.k (or user_k/item_k) or loosen earlier filters.",
        user_k=int(uk),
        item_k=int(ik),
        iterations=iterations,
    )
    return out, report


def filter_verified_images(
    interactions: pd.DataFrame,
    image_availability: pd.DataFrame,
    required_modalities: list[str],
    k: int,
    user_k: int | None = None,
    item_k: int | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Drop the items whose image could not be verified and re-apply the k-core, until nothing changes.

    Images are fetched only for the k-core computed with cheap image candidates; some then fail (404,
    corrupt, too large). Because the k-core is monotone and every verified item was a candidate, this fixed
    point equals the paper's data set: the k-core of the interactions restricted to items with a verified
    image (``tests/pipelines/preprocessing/test_image_fixed_point.py`` checks it against a brute force).
    Without ``image`` in ``required_modalities`` the interactions pass unchanged.
    """
    uk, ik = _bounds(k, user_k, item_k)
    df = interactions.reset_index(drop=True)
    out, rounds, dropped = df, 0, set()
    if "image" in (required_modalities or []):
        flags = image_availability.drop_duplicates("item_id")
        verified = pd.Index(flags.loc[flags["has_image"].astype(bool), "item_id"].astype(str))
        while True:
            keep = isin(out["item_id"], verified)
            if keep.all():
                break
            rounds += 1
            dropped |= set(out.loc[~keep, "item_id"])
            out, _ = _kcore(out[keep].reset_index(drop=True), uk, ik)
    report = _stage_report(
        "images",
        df,
        out,
        "No item of the k-core has a verified image; check data/08_reporting/image_acquisition_report.json "
        "(image source reachable?) or drop image from preprocessing.required_modalities.",
        required=("image" in (required_modalities or [])),
        items_without_verified_image=len(dropped),
        rounds=rounds,
        user_k=int(uk),
        item_k=int(ik),
    )
    return out, report


def select_items(kcore_interactions: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """The metadata rows of the items left after the k-core, in ``items`` order (what the features embed)."""
    kept = _unique_items(items, kcore_interactions["item_id"].unique()).reset_index(drop=True)
    missing = kcore_interactions["item_id"].nunique() - len(kept)
    if missing:
        raise ValueError(
            f"{missing} items left after the k-core have no metadata row; completeness should drop them"
        )
    return kept


def build_dataset_statistics(
    stage_counts_window: dict[str, Any],
    stage_counts_categories: dict[str, Any],
    stage_counts_dedup: dict[str, Any],
    stage_counts_completeness: dict[str, Any],
    stage_counts_kcore: dict[str, Any],
    stage_counts_images: dict[str, Any],
    kcore_interactions: pd.DataFrame,
    dataset_name: str,
    ingestion_report: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """Table-1-style statistics of the final data (#Users, #Items, average actions, #Interactions) plus the
    per-stage funnel, as a JSON-able dict and a Markdown table for ``data/08_reporting``; with the ingestion
    report, also the category labels kept and those dropped as not categories.
    """
    c = _counts(kcore_interactions)
    table = {
        "users": c["users"],
        "items": c["items"],
        "avg_actions_per_user": round(c["interactions"] / c["users"], 2),
        "avg_actions_per_item": round(c["interactions"] / c["items"], 2),
        "interactions": c["interactions"],
        "density": round(c["interactions"] / (c["users"] * c["items"]), 6),
    }
    ts = kcore_interactions["timestamp"]
    stages = [stage_counts_window, stage_counts_categories, stage_counts_dedup, stage_counts_completeness]
    stages += [stage_counts_kcore, stage_counts_images]
    funnel = [
        {"stage": s["stage"], **s["after"], "removed_interactions": s["removed_interactions"]} for s in stages
    ]
    stats = {
        "dataset": dataset_name,
        "table1": table,
        "first_interaction": ts.min().isoformat(),
        "last_interaction": ts.max().isoformat(),
        "input": stage_counts_window["before"],
        "funnel": funnel,
    }
    lines = [
        f"# Dataset statistics: {dataset_name}",
        "",
        f"| Dataset | {dataset_name} |",
        "|---|---:|",
        f"| #Users | {table['users']:,} |",
        f"| #Items | {table['items']:,} |",
        f"| #Avg. Actions/User | {table['avg_actions_per_user']:.1f} |",
        f"| #Avg. Actions/Item | {table['avg_actions_per_item']:.1f} |",
        f"| #Interactions | {table['interactions']:,} |",
        "",
        f"Interactions from {stats['first_interaction']} to {stats['last_interaction']}.",
        "",
        "## Funnel",
        "",
        "| stage | interactions | users | items | removed interactions |",
        "|---|---:|---:|---:|---:|",
        f"| input | {stats['input']['interactions']:,} | {stats['input']['users']:,} | "
        f"{stats['input']['items']:,} | |",
    ]
    lines += [
        f"| {f['stage']} | {f['interactions']:,} | {f['users']:,} | {f['items']:,} | "
        f"{f['removed_interactions']:,} |"
        for f in funnel
    ]
    labels = (((ingestion_report or {}).get("files") or {}).get("metadata") or {}).get("labels")
    if labels:
        stats["category_labels"] = labels
        lines += _label_lines(labels)
    return stats, "\n".join(lines) + "\n"


def _label_lines(labels: dict[str, Any]) -> list[str]:
    """The Markdown section on category labels kept and dropped (ingestion.metadata.labels)."""
    dropped = labels.get("dropped") or {}
    lines = [
        "",
        "## Category labels",
        "",
        f"{labels['kept_distinct']:,} distinct labels kept; label occurrences dropped as not categories "
        "(ingestion.metadata.labels):",
        "",
        "| reason | occurrences |",
        "|---|---:|",
    ]
    lines += [f"| {reason} | {count:,} |" for reason, count in sorted(dropped.items())] or ["| none | 0 |"]
    examples = labels.get("dropped_examples") or {}
    if examples:
        lines += ["", "Dropped, e.g.: " + "; ".join(f"{label!r} ({n:,})" for label, n in examples.items())]
    return lines
