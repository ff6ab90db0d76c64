"""Interaction-only inputs, to compare with published baselines: RecBole atomic files and two text formats.

* RecBole atomic files (https://recbole.io/docs/user_guide/data/atomic_files.html): a tab-separated ``.inter``
  whose header names each column ``field:type`` (``user_id:token item_id:token rating:float timestamp:float``;
  rating and timestamp optional), and optionally a sibling ``.item`` (same stem) whose ``token`` or
  ``token_seq`` columns become the item's title, text and categories (e.g. ml-100k: ``movie_title`` -> title
  and text, ``class`` genres -> categories). ``token_seq`` values are split on ``seq_separator`` (a space).
* RecBole's pre-split benchmark files (``<name>.train.inter``, ``.valid.inter``, ``.test.inter`` with an
  ``item_id_list`` history column; UniSRec, VQ-Rec, MISSRec): the split is kept exactly (``benchmark_split``),
  ids go through ``<name>.item2index`` / ``<name>.user2index`` when present, and ``<name>.text`` (or
  ``<name>.item``) gives the items' text.
* The SASRec authors' format (``data/Beauty.txt`` etc.): one ``user item`` pair per line, each user's lines in
  time order and no timestamps. Timestamps are synthesised in file order (``synthetic_start`` plus one
  ``synthetic_step_s`` per line), which keeps every user's order and makes ties impossible. A line with more
  than two fields is not this format: ``auto`` reads such a file as ``user_sequence``, a forced ``user_item``
  rejects it (never keeps only the first item).
* The line-per-user format of S3-Rec, ICLRec, DuoRec and most later repositories (``data/Beauty.txt``): one
  line per user, ``user item item ...`` in time order. Timestamps are synthesised in the same way. A line
  without an item, or a user already seen on an earlier line, is malformed: counted, skipped and reported
  (the read fails when more than ``max_bad_fraction`` of the lines are).
* With either text format (or a RecBole file), a sibling ``<name>_item2attributes.json`` (``Beauty.txt`` ->
  ``Beauty_item2attributes.json``, as those repositories ship it: ``{"item_id": [attribute ids]}``) is read
  without configuration: each item's attribute ids become its category labels, i.e. the ``category`` modality.

Both produce the ``interactions`` and ``items`` tables of the data contract (items without metadata get empty
fields: the preprocessing ``required_modalities`` then decide), so the rest of the chain runs unchanged.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import unicodedata
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from maf_pipeline.datasets import RawSource
from maf_pipeline.parameters import filled

from .benchmark_split import benchmark_interactions, is_benchmark_split, read_index, sibling, split_files
from .nodes import window_bounds
from .rows import ITEMS_SCHEMA

logger = logging.getLogger(__name__)

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


def _settings(params: dict[str, Any] | None) -> dict[str, Any]:
    """``params:ingestion.interaction_only`` checked and complete (the schema's defaults)."""
    return filled("ingestion.interaction_only", params)


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
    """``interactions`` from ``user item`` lines in time order (whitespace-separated; blank lines skipped).

    A line with more than two fields is rejected, not truncated: it is another format (``user_sequence``).
    """
    pairs = [line.split() for line in text.splitlines() if line.strip()]
    bad = [i for i, p in enumerate(pairs, start=1) if len(p) < 2]
    if bad:
        raise ValueError(f"user item file: non-blank lines {bad[:10]} do not hold a user and an item")
    long = [i for i, p in enumerate(pairs, start=1) if len(p) > 2]
    if long:
        raise ValueError(
            f"user item file: lines {long[:10]} (of {len(long)}) hold more than a user and an item: "
            "a line-per-user file (user item item ...) is format user_sequence (or auto)"
        )
    out = pd.DataFrame({"user_id": [p[0] for p in pairs], "item_id": [p[1] for p in pairs]})
    out["rating"] = np.float32(1.0)
    out["timestamp"] = synthetic_timestamps(len(out), cfg["synthetic_start"], cfg["synthetic_step_s"])
    return out


def user_sequence_interactions(text: str, cfg: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``interactions`` from ``user item item ...`` lines (one per user, items in time order) and a count of
    the malformed lines skipped: a line with a user but no item, or a user already seen on an earlier line
    (its items could belong before or after the first line's, so neither order is trusted more)."""
    users: list[str] = []
    items: list[str] = []
    seen: set[str] = set()
    bad: list[int] = []
    lines = 0
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        lines += 1
        if len(fields) < 2 or fields[0] in seen:
            bad.append(number)
            continue
        seen.add(fields[0])
        users.extend([fields[0]] * (len(fields) - 1))
        items.extend(fields[1:])
    limit = float(cfg["max_bad_fraction"])
    if bad:
        logger.warning(
            "line-per-user file: %d of %d non-blank lines malformed (no item, or a user seen before) and "
            "skipped; first: %s",
            len(bad), lines, bad[: int(cfg["first_bad_lines"])],
        )  # fmt: skip
    if lines and len(bad) / lines > limit:
        raise ValueError(
            f"line-per-user file: {len(bad)} of {lines} non-blank lines are malformed (no item, or a user "
            f"seen before), more than max_bad_fraction {limit}; first: {bad[: int(cfg['first_bad_lines'])]}"
        )
    out = pd.DataFrame({"user_id": users, "item_id": items})
    out["rating"] = np.float32(1.0)
    out["timestamp"] = synthetic_timestamps(len(out), cfg["synthetic_start"], cfg["synthetic_step_s"])
    return out, {
        "lines": lines,
        "malformed_lines": len(bad),
        "first_malformed": bad[: int(cfg["first_bad_lines"])],
    }


def read_attributes(source: RawSource) -> dict[str, list[str]]:
    """An ``item2attributes`` JSON object (item id -> list of attribute ids) as string labels per item."""
    data = json.loads(_read_text(source))
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{source.name}: expected a JSON object of item id -> list of attribute ids")
    return {str(item): [str(a) for a in attributes] for item, attributes in data.items()}


def add_attributes(items: pd.DataFrame, attributes: dict[str, list[str]]) -> pd.DataFrame:
    """``items`` with each item's attribute ids appended to its category labels (deduplicated, in order)."""
    out = items.copy()
    out["categories"] = [
        list(dict.fromkeys([*labels, *attributes.get(item, [])]))
        for item, labels in zip(out["item_id"], out["categories"], strict=True)
    ]
    return out


def _labels(value: str, kind: str, seq_separator: str) -> list[str]:
    value = unicodedata.normalize("NFC", value)  # one spelling per label and word (ids are left byte-exact)
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


def detect_interaction_format(source: RawSource, cfg: dict[str, Any], text: str | None = None) -> str:
    """The forced format, else ``recbole`` for ``*.inter`` (or ``*.inter.gz``; ``recbole_split`` for the
    pre-split benchmark files), else from the text: a line
    with more than two fields makes it ``user_sequence`` (line per user), otherwise ``user_item``."""
    if cfg["format"] != "auto":
        return cfg["format"]
    if _is_inter(source):
        header = _read_text(source).partition("\n")[0] if text is None else text.partition("\n")[0]
        return "recbole_split" if is_benchmark_split(source, header, cfg["field_separator"]) else "recbole"
    text = _read_text(source) if text is None else text
    return "user_sequence" if any(len(line.split()) > 2 for line in text.splitlines()) else "user_item"


def _is_inter(source: RawSource) -> bool:
    return ".inter" in PurePosixPath(source.path).suffixes[-2:]


def _sibling(source: RawSource, suffix: str) -> RawSource:
    path = PurePosixPath(source.path)
    stem = path.name.split(".inter")[0]
    return RawSource(str(path.with_name(stem + suffix)), source.protocol, source.storage_options)


def _item_file(source: RawSource, fmt: str) -> RawSource | None:
    """The item file next to an ``.inter`` file: ``<stem>.item``, and for the split files ``<name>.text``."""
    if fmt == "recbole_split":
        candidates = (sibling(source, ".item"), sibling(source, ".text"))
    else:
        candidates = (_sibling(source, ".item"),)
    return next((c for c in candidates if c.exists()), None)


def _item_table(source: RawSource, cfg: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, str]]:
    return read_atomic(_read_text(source), cfg["field_separator"])


def read_item_file(
    source: RawSource, params: dict[str, Any] | None, item_ids: list[str] | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``items`` from a RecBole atomic item file (``.item``, or the benchmark ``.text``: ``item_id text``),
    restricted to ``item_ids`` when given (items without a row get empty fields), and a report."""
    cfg = _settings(params)
    frame, fields = _item_table(source, cfg)
    items = recbole_items(list(item_ids or []), frame, fields, cfg)
    if item_ids is not None:
        items = items[items["item_id"].isin(set(item_ids))].reset_index(drop=True)
    report = {
        "format": "recbole_item",
        "file": source.name,
        "fields": fields,
        "records": len(frame),
        "kept": len(items),
        "items_with": {
            "title": int((items["title"] != "").sum()),
            "text": int((items["text"] != "").sum()),
            "categories": int(items["categories"].map(len).gt(0).sum()),
        },
    }
    return items, report


def _index_map(source: RawSource, suffix: str) -> dict[str, str] | None:
    """``<name><suffix>`` (``.item2index``, ``.user2index``) as index -> raw id, or None when absent."""
    path = sibling(source, suffix)
    return read_index(_read_text(path), path.name) if path.exists() else None


def read_split_files(source: RawSource, cfg: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The pre-split benchmark files next to ``source`` as ``interactions`` with a ``split`` column."""
    files = split_files(source)
    absent = [f.name for f in files.values() if not f.exists()]
    if absent:
        raise FileNotFoundError(f"benchmark split: {absent} not found next to {source.name}")
    texts = {s: (f.name, _read_text(f)) for s, f in files.items()}
    items, users = _index_map(source, ".item2index"), _index_map(source, ".user2index")
    interactions, report = benchmark_interactions(texts, items, users, cfg)
    stamps = synthetic_timestamps(len(interactions), cfg["synthetic_start"], cfg["synthetic_step_s"])
    interactions.insert(3, "timestamp", stamps)
    return interactions, report


def _read_interactions(
    source: RawSource, cfg: dict[str, Any]
) -> tuple[str, pd.DataFrame, bool, RawSource | None, dict[str, Any]]:
    """Format, ``interactions``, whether timestamps are synthetic, the item file and format details."""
    text = None if _is_inter(source) and cfg["format"] == "auto" else _read_text(source)
    fmt = detect_interaction_format(source, cfg, text)
    if fmt == "recbole_split":
        interactions, details = read_split_files(source, cfg)
        return fmt, interactions, True, _item_file(source, fmt), {"split": details}
    if fmt == "recbole":
        frame, fields = read_atomic(text or _read_text(source), cfg["field_separator"])
        synthetic = cfg["time_field"] not in fields
        return fmt, recbole_interactions(frame, fields, cfg), synthetic, _item_file(source, fmt), {}
    if fmt == "user_item":
        return fmt, user_item_interactions(text, cfg), True, None, {}
    interactions, lines = user_sequence_interactions(text, cfg)
    return fmt, interactions, True, None, {"lines": lines}


def _apply_window(
    interactions: pd.DataFrame, date_window: dict[str, Any] | None, synthetic: bool, start: str
) -> pd.DataFrame:
    """Rows inside the date window; synthesised timestamps are never windowed (a warning says so)."""
    lo, hi = window_bounds(date_window)
    if lo is None and hi is None:
        return interactions
    if synthetic:
        logger.warning("timestamps are synthesised (from %s): date_window is not applied", start)
        return interactions
    ns = pd.DatetimeIndex(interactions["timestamp"]).as_unit("ns").asi8
    keep = np.ones(len(ns), dtype=bool)
    if lo is not None:
        keep &= ns >= lo
    if hi is not None:
        keep &= ns < hi
    return interactions[keep].reset_index(drop=True)


def _with_attributes(
    items: pd.DataFrame, source: RawSource, suffix: str
) -> tuple[pd.DataFrame, str | None, int]:
    """``items`` with the sibling ``item2attributes`` ids as categories, when that file exists."""
    attributes_source = sibling(source, suffix)  # Beauty.txt.gz -> Beauty_item2attributes.json
    if not attributes_source.exists():
        return items, None, 0
    attributes = read_attributes(attributes_source)
    unused = len(set(attributes) - set(items["item_id"]))
    logger.info(
        "%s: attribute ids of %d items become their categories (%d items not in the interactions)",
        attributes_source.name, len(attributes) - unused, unused,
    )  # fmt: skip
    return add_attributes(items, attributes), attributes_source.name, unused


def ingest_interaction_files(
    raw_interactions: RawSource, params: dict[str, Any] | None, date_window: dict[str, Any] | None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Read a RecBole ``.inter`` (+ its ``.item``), the pre-split benchmark files (+ ``.text``), a
    ``user item`` or a line-per-user file (+ a sibling ``<name>_item2attributes.json``) into ``interactions``
    and ``items``.

    Rows outside the inclusive ``date_window`` are dropped when the timestamps are real (synthesised ones are
    never windowed: set ``date_window`` to nulls for such data). Returns the tables and a report.
    """
    cfg = _settings(params)
    fmt, interactions, synthetic, item_source, details = _read_interactions(raw_interactions, cfg)
    read = len(interactions)
    interactions = _apply_window(interactions, date_window, synthetic, cfg["synthetic_start"])
    item_ids = list(dict.fromkeys(interactions["item_id"]))
    frame, fields = (None, {}) if item_source is None else _item_table(item_source, cfg)
    items = recbole_items(item_ids, frame, fields, cfg)
    items, attributes_file, attributes_unused = _with_attributes(
        items, raw_interactions, cfg["attributes_suffix"]
    )
    lines = details.get("lines") or {}
    report = {
        "format": fmt,
        "files": {
            "interactions": raw_interactions.name,
            "items": item_source.name if item_source else None,
            "attributes": attributes_file,
        },
        "synthetic_timestamps": synthetic,
        "summary": {
            "interactions_read": read,
            **({"lines": lines["lines"], "malformed_lines": lines["malformed_lines"]} if lines else {}),
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
    if lines:
        report["first_malformed_lines"] = lines["first_malformed"]
    if "split" in details:
        report["split"] = details["split"]
    if attributes_file:
        report["summary"]["attribute_items_not_in_interactions"] = attributes_unused
    logger.info(
        "interaction-only input (%s): %d interactions, %d users, %d items, item file %s",
        fmt, len(interactions), report["summary"]["users"], report["summary"]["items"],
        report["files"]["items"],
    )  # fmt: skip
    return interactions, items, report
