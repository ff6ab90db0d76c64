"""Interaction-only inputs, to compare with published baselines: RecBole atomic files and ``user item`` text.

* RecBole atomic files (https://recbole.io/docs/user_guide/data/atomic_files.html): a tab-separated ``.inter``
  whose header names each column ``field:type`` (``user_id:token item_id:token rating:float timestamp:float``;
  rating and timestamp optional), and optionally a sibling ``.item`` (same stem) whose ``token`` or
  ``token_seq`` columns become the item's title, text and categories (e.g. ml-100k: ``movie_title`` -> title
  and text, ``class`` genres -> categories). ``token_seq`` values are split on ``seq_separator`` (a space).
* The SASRec authors' format (``data/Beauty.txt`` etc.): one ``user item`` pair per line, each user's lines in
  time order and no timestamps. Timestamps are synthesised in file order (``synthetic_start`` plus one
  ``synthetic_step_s`` per line), which keeps every user's order and makes ties impossible.

Both produce the ``interactions`` and ``items`` tables of the data contract (items without metadata get empty
fields: the preprocessing ``required_modalities`` then decide), so the rest of the chain runs unchanged.
"""

from __future__ import annotations

import gzip
import io
import logging
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from maf_pipeline.datasets import RawSource

from .nodes import window_bounds
from .rows import ITEMS_SCHEMA

logger = logging.getLogger(__name__)

FORMATS = ("auto", "recbole", "user_item")
DEFAULTS: dict[str, Any] = {
    "format": "auto",  # auto: a .inter file (optionally .gz) is RecBole, anything else user_item
    "field_separator": "\t",
    "seq_separator": " ",
    "user_field": "user_id",
    "item_field": "item_id",
    "rating_field": "rating",
    "time_field": "timestamp",
    "title_fields": ["movie_title", "title", "name"],  # the first present one is the title
    "text_fields": ["movie_title", "title", "name", "description"],  # all present ones, joined
    "category_fields": ["class", "genre", "genres", "categories", "category"],  # labels, in this order
    "brand_fields": ["brand"],
    "synthetic_start": "2000-01-01",
    "synthetic_step_s": 1,
}
ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


def _settings(params: dict[str, Any] | None) -> dict[str, Any]:
    cfg = {**DEFAULTS, **(params or {})}
    if cfg["format"] not in FORMATS:
        raise ValueError(f"ingestion.interaction_only.format must be one of {FORMATS}, got {cfg['format']!r}")
    return cfg


def _read_text(source: RawSource) -> str:
    """The whole file as text (gzip detected from its magic bytes); interaction-only files are small."""
    with source.open("rb") as handle:
        data = handle.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8-sig")


def read_atomic(text: str, field_separator: str = "\t") -> tuple[pd.DataFrame, dict[str, str]]:
    """Parse a RecBole atomic file: string columns named by field, and each field's declared type."""
    header, _, body = text.partition("\n")
    fields: dict[str, str] = {}
    for column in header.rstrip("\r").split(field_separator):
        name, sep, kind = column.strip().partition(":")
        if not sep or kind not in ATOMIC_TYPES:
            raise ValueError(
                f"atomic file header column {column!r} is not 'name:type' with type in {ATOMIC_TYPES}"
            )
        fields[name] = kind
    frame = pd.read_csv(
        io.StringIO(body),
        sep=field_separator,
        names=list(fields),
        dtype=str,
        keep_default_na=False,
        quoting=3,  # csv.QUOTE_NONE: quotes are part of titles
        engine="python" if len(field_separator) > 1 else "c",
    )
    return frame, fields


def synthetic_timestamps(n: int, start: str, step_s: float) -> pd.Series:
    """``n`` strictly increasing UTC timestamps ``start + i * step_s`` seconds (file order)."""
    origin = pd.Timestamp(start, tz="UTC")
    return pd.Series(origin + pd.to_timedelta(np.arange(n) * float(step_s), unit="s"))


def recbole_interactions(frame: pd.DataFrame, fields: dict[str, str], cfg: dict[str, Any]) -> pd.DataFrame:
    """``interactions`` from a parsed ``.inter``: ids as strings, rating float32 (1.0 if absent), UTC time."""
    user, item, rating, time = (cfg[k] for k in ("user_field", "item_field", "rating_field", "time_field"))
    missing = [f for f in (user, item) if f not in fields]
    if missing:
        raise ValueError(f".inter file has no {missing} column (header fields: {list(fields)})")
    out = pd.DataFrame({"user_id": frame[user].astype(str), "item_id": frame[item].astype(str)})
    out["rating"] = (
        pd.to_numeric(frame[rating], errors="raise").astype("float32")
        if rating in fields
        else np.float32(1.0)
    )
    if time in fields:
        seconds = pd.to_numeric(frame[time], errors="raise").to_numpy(dtype="float64")
        out["timestamp"] = pd.to_datetime(np.round(seconds * 1e9).astype("int64"), unit="ns", utc=True)
    else:
        logger.info(".inter file has no %r column: timestamps synthesised in file order", time)
        out["timestamp"] = synthetic_timestamps(len(out), cfg["synthetic_start"], cfg["synthetic_step_s"])
    return out


def user_item_interactions(text: str, cfg: dict[str, Any]) -> pd.DataFrame:
    """``interactions`` from ``user item`` lines in time order (whitespace-separated; blank lines skipped)."""
    pairs = [line.split() for line in text.splitlines() if line.strip()]
    bad = [i for i, p in enumerate(pairs, start=1) if len(p) < 2]
    if bad:
        raise ValueError(f"user item file: non-blank lines {bad[:10]} do not hold a user and an item")
    out = pd.DataFrame({"user_id": [p[0] for p in pairs], "item_id": [p[1] for p in pairs]})
    out["rating"] = np.float32(1.0)
    out["timestamp"] = synthetic_timestamps(len(out), cfg["synthetic_start"], cfg["synthetic_step_s"])
    return out


def _labels(value: str, kind: str, seq_separator: str) -> list[str]:
    if kind == "token_seq":
        return [t for t in value.split(seq_separator) if t]
    return [value] if value else []


def recbole_items(
    item_ids: list[str], frame: pd.DataFrame | None, fields: dict[str, str], cfg: dict[str, Any]
) -> pd.DataFrame:
    """``items`` for ``item_ids`` (+ those of the ``.item`` file): title, text, categories from its columns.

    ``token_seq`` text columns are joined back with spaces; category columns contribute their tokens as labels
    (deduplicated, in column order). Items absent from the ``.item`` file get empty fields.
    """
    sep = cfg["seq_separator"]
    rows: dict[str, dict[str, Any]] = {}
    if frame is not None:
        item = cfg["item_field"]
        if item not in fields:
            raise ValueError(f".item file has no {item!r} column (header fields: {list(fields)})")
        title_field = next((f for f in cfg["title_fields"] if f in fields), None)
        text_fields = [f for f in cfg["text_fields"] if f in fields]
        category_fields = [
            f for f in cfg["category_fields"] if f in fields and fields[f] in ("token", "token_seq")
        ]
        brand_field = next((f for f in cfg["brand_fields"] if f in fields), None)
        logger.info(
            ".item file: title %s, text %s, categories %s (fields %s)",
            title_field,
            text_fields,
            category_fields,
            fields,
        )
        for record in frame.to_dict("records"):
            texts = [" ".join(_labels(record[f], fields[f], sep)) for f in text_fields]
            labels = [label for f in category_fields for label in _labels(record[f], fields[f], sep)]
            rows[str(record[item])] = {
                "title": " ".join(_labels(record[title_field], fields[title_field], sep))
                if title_field
                else "",
                "text": " ".join(dict.fromkeys(t for t in texts if t)),
                "categories": list(dict.fromkeys(labels)),
                "brand": record[brand_field] if brand_field else "",
            }
    empty = {"title": "", "text": "", "categories": [], "brand": ""}
    ids = list(dict.fromkeys([*item_ids, *rows]))
    items = pd.DataFrame([{"item_id": i, **rows.get(i, empty), "image_urls": []} for i in ids])
    if items.empty:
        return ITEMS_SCHEMA.empty_table().to_pandas()
    return items[ITEMS_SCHEMA.names]


def detect_interaction_format(source: RawSource, cfg: dict[str, Any]) -> str:
    """``recbole`` for ``*.inter`` (or ``*.inter.gz``), else ``user_item``, unless the format is forced."""
    if cfg["format"] != "auto":
        return cfg["format"]
    suffixes = PurePosixPath(source.path).suffixes
    return "recbole" if ".inter" in suffixes[-2:] else "user_item"


def _sibling(source: RawSource, suffix: str) -> RawSource:
    path = PurePosixPath(source.path)
    stem = path.name.split(".inter")[0]
    return RawSource(str(path.with_name(stem + suffix)), source.protocol, source.storage_options)


def ingest_interaction_files(
    raw_interactions: RawSource, params: dict[str, Any] | None, date_window: dict[str, Any] | None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Read a RecBole ``.inter`` (+ its ``.item``) or a ``user item`` file into ``interactions``, ``items``.

    Rows outside the inclusive ``date_window`` are dropped when the timestamps are real (synthesised ones are
    never windowed: set ``date_window`` to nulls for such data). Returns the tables and a report.
    """
    cfg = _settings(params)
    fmt = detect_interaction_format(raw_interactions, cfg)
    item_file = None
    if fmt == "recbole":
        frame, fields = read_atomic(_read_text(raw_interactions), cfg["field_separator"])
        interactions = recbole_interactions(frame, fields, cfg)
        synthetic = cfg["time_field"] not in fields
        item_source = next((s for s in (_sibling(raw_interactions, ".item"),) if s.exists()), None)
        item_frame, item_fields = (None, {})
        if item_source is not None:
            item_file = item_source.name
            item_frame, item_fields = read_atomic(_read_text(item_source), cfg["field_separator"])
    else:
        interactions = user_item_interactions(_read_text(raw_interactions), cfg)
        synthetic, item_frame, item_fields = True, None, {}
    read = len(interactions)
    lo, hi = window_bounds(date_window)
    if synthetic and (lo is not None or hi is not None):
        logger.warning(
            "timestamps are synthesised (from %s): date_window is not applied", cfg["synthetic_start"]
        )
    elif lo is not None or hi is not None:
        ns = pd.DatetimeIndex(interactions["timestamp"]).as_unit("ns").asi8
        keep = np.ones(len(ns), dtype=bool)
        if lo is not None:
            keep &= ns >= lo
        if hi is not None:
            keep &= ns < hi
        interactions = interactions[keep].reset_index(drop=True)
    items = recbole_items(list(dict.fromkeys(interactions["item_id"])), item_frame, item_fields, cfg)
    report = {
        "format": fmt,
        "files": {"interactions": raw_interactions.name, "items": item_file},
        "synthetic_timestamps": synthetic,
        "summary": {
            "interactions_read": read,
            "interactions": len(interactions),
            "outside_window": read - len(interactions) if not synthetic else 0,
            "users": int(interactions["user_id"].nunique()),
            "items": int(interactions["item_id"].nunique()),
            "items_with": {
                "title": int((items["title"] != "").sum()),
                "text": int((items["text"] != "").sum()),
                "categories": int(items["categories"].map(len).gt(0).sum()),
            },
        },
    }
    logger.info(
        "interaction-only input (%s): %d interactions, %d users, %d items, item file %s",
        fmt, len(interactions), report["summary"]["users"], report["summary"]["items"], item_file,
    )  # fmt: skip
    return interactions, items, report
