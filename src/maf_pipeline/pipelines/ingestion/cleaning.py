"""Cleaning of metadata fields: HTML stripped from text, category labels unescaped, image URLs at full size.

Text is cleaned column-wise with Arrow compute (RE2 regexes), each regex only on the rows that can match it
(found by a numpy scan of the string buffer for "<", "&" or unusual whitespace, many times faster than a regex
over every row); only values holding an HTML entity go through Python's ``html.unescape``.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# A tag starts with a letter, "/" or "!" right after "<" (so "size < 5" survives); real titles can be cut
# mid-tag ('<span class="a-size-medium ...'), so an unclosed tag runs to the end of the string.
TAG_PATTERN = r"<[A-Za-z/!][^>]*(?:>|$)"
# Runs of whitespace, or single whitespace other than " " (far cheaper for RE2 than rewriting every space).
_WHITESPACE = (
    r"[\s\p{Z}]{2,}"
    r"|[\t\n\r\f\v\x{0085}\x{00A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]"
)
# Amazon image URLs carry size/crop directives between the image id and the extension
# ("I/51Iph04Jy3L._SX38_SY50_CR,0,0,38,50_.jpg"); dropping them gives the full-size image
# ("I/51Iph04Jy3L.jpg"). 2018 imageURLHighRes lists sometimes keep a part ("._SX35_SY46.jpg"): cut too.
THUMBNAIL_PATTERN = r"\._[^/]*\.(jpe?g|png|gif|webp)$"
_TAG_RE = re.compile(TAG_PATTERN)


def _has_lt(data: np.ndarray) -> np.ndarray:
    return data == 60  # "<"


def _has_amp(data: np.ndarray) -> np.ndarray:
    return data == 38  # "&"


def _has_double_space(data: np.ndarray) -> np.ndarray:
    space = data == 32
    space[:-1] &= space[1:]
    space[-1:] = False
    return space


def _has_odd_whitespace(data: np.ndarray) -> np.ndarray:
    """Bytes where _WHITESPACE can match: two spaces, \t \n \v \f \r (9..13), or any non-ASCII byte (RE2's
    \\s is ASCII-only, and every non-ASCII space of \\p{Z} and the list is a multi-byte UTF-8 sequence)."""
    return ((data - np.uint8(9)) < 5) | (data >= 128) | _has_double_space(data)


_WS_RE = re.compile(r"\s+")
_ALT_RE = re.compile(r"""alt=["']([^"']*)["']""")


def rows_containing(values: pa.Array, predicate: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Boolean mask of the rows of a string array with a byte where ``predicate`` (on the data buffer as
    uint8) is true: one vectorised pass over the buffer instead of a regex per row."""
    mask = np.zeros(len(values), dtype=bool)
    _, offset_buf, data_buf = values.buffers()
    if not len(values) or data_buf is None:
        return mask
    offsets = np.frombuffer(offset_buf, dtype=np.int32, count=len(values) + 1, offset=values.offset * 4)
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]]
    if not len(data):
        return mask
    hits = np.flatnonzero(predicate(data)) + offsets[0]
    mask[np.searchsorted(offsets, hits, side="right") - 1] = True
    return mask


def _where(values: pa.Array, mask: np.ndarray, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``fn`` applied to the masked rows only; the other rows are kept as they are."""
    if not mask.any():
        return values
    if mask.all():
        return fn(values)
    selected = pa.array(mask)
    return pc.replace_with_mask(values, selected, fn(values.filter(selected)))


def _strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Nulls as empty strings, in one contiguous ``string`` array."""
    values = pc.fill_null(values, "") if values.null_count else values
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return values.cast(pa.string()) if values.type != pa.string() else values


def clean_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Strip HTML tags, unescape entities and normalise whitespace; nulls become empty strings."""
    values = _strings(values)
    values = _where(
        values, rows_containing(values, _has_lt), lambda v: pc.replace_substring_regex(v, TAG_PATTERN, " ")
    )
    values = _unescape(values)
    values = _where(
        values,
        rows_containing(values, _has_odd_whitespace),
        lambda v: pc.replace_substring_regex(v, _WHITESPACE, " "),
    )
    return _nfc(pc.utf8_trim_whitespace(values))


def _has_non_ascii(data: np.ndarray) -> np.ndarray:
    return data >= 128


def _nfc(values: pa.Array) -> pa.Array:
    """Unicode NFC on the rows with a non-ASCII byte (only those can hold a decomposed character), so one
    title written composed or decomposed is one text. Python's ``unicodedata``: Arrow 25's ``utf8_normalize``
    returned decomposed strings for form NFC."""

    def normalize(selected: pa.Array) -> pa.Array:
        return pa.array([unicodedata.normalize("NFC", v) for v in selected.to_pylist()], type=pa.string())

    return _where(values, rows_containing(values, _has_non_ascii), normalize)


def _unescape(values: pa.Array) -> pa.Array:
    """``html.unescape`` on the values that contain "&" (then tags again: "&lt;b&gt;" is markup too)."""

    def unescape(selected: pa.Array) -> pa.Array:
        replaced = [_TAG_RE.sub(" ", html.unescape(v)) for v in selected.to_pylist()]
        return pa.array(replaced, type=pa.string())

    return _where(values, rows_containing(values, _has_amp), unescape)


def join_text(parts: Sequence[pa.Array]) -> pa.Array:
    """Join already-clean text columns with single spaces, skipping empty parts."""
    joined = _strings(pc.binary_join_element_wise(*parts, " "))
    joined = _where(
        joined,
        rows_containing(joined, _has_double_space),
        lambda v: pc.replace_substring_regex(v, " {2,}", " "),
    )
    return pc.utf8_trim_whitespace(joined)


def join_list(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Join a list<string> column into one string per row (null and empty lists give "")."""
    return pc.fill_null(pc.binary_join(values, " "), "")


def clean_label(label: str) -> str:
    """One category label: entities unescaped, tags dropped (an ``<img alt=...>`` gives its alt text), in
    Unicode NFC, so a label written composed (``Café``) or decomposed (``Cafe`` + U+0301) is one label."""
    label = html.unescape(label)
    if "<" in label:
        alt = _ALT_RE.search(label)
        label = alt.group(1) if alt else _TAG_RE.sub(" ", label)
    return unicodedata.normalize("NFC", _WS_RE.sub(" ", label).strip())


def clean_path(labels: Iterable[str | None]) -> list[str]:
    """Category labels in order, cleaned, without empty strings and without repeats."""
    out: list[str] = []
    for label in labels:
        if label is None:
            continue
        cleaned = clean_label(label)
        if cleaned and cleaned not in out:
            out.append(cleaned)
    return out


_SENTENCE_RE = re.compile(r"""(\w[.!?]["')\]]*$)|(\w[.!?]\s+\S)""")


def label_drop_reason(label: str, rule: dict[str, Any]) -> str | None:
    """Why a category label is not a category (``None``: it is one): on the stop list, longer than
    ``max_words`` words or ``max_chars`` characters, or a sentence (``drop_sentences``: it ends with, or holds
    after a word, ``.``, ``!`` or ``?``). Real metadata puts marketing copy such as "No expiration, no fees."
    into category lists, where it would crowd out the real label."""
    folded = label.casefold()
    if folded in {unicodedata.normalize("NFC", str(s)).casefold() for s in rule["stop_list"]}:
        return "stop_list"
    if (rule["max_words"] and len(label.split()) > int(rule["max_words"])) or (
        rule["max_chars"] and len(label) > int(rule["max_chars"])
    ):
        return "too_long"
    if rule["drop_sentences"] and _SENTENCE_RE.search(label):
        return "sentence"
    return None


def split_labels(path: Sequence[str], rule: dict[str, Any]) -> tuple[list[str], list[tuple[str, str]]]:
    """The labels of ``path`` that are categories, and the others with the reason each was dropped."""
    kept: list[str] = []
    dropped: list[tuple[str, str]] = []
    for label in path:
        reason = label_drop_reason(label, rule)
        if reason is None:
            kept.append(label)
        else:
            dropped.append((label, reason))
    return kept, dropped


CATEGORY_PATHS = ("all", "longest")


def merge_paths(paths: Sequence[Sequence[str] | None] | None, keep: str = "all") -> list[str]:
    """The labels of the 2014 format's several category paths: ``all`` paths' labels in order, each once
    (an item listed under Women > Dresses and Girls > Dresses keeps Women, Dresses and Girls), or only the
    ``longest`` (most specific) path, the first among equals."""
    if keep not in CATEGORY_PATHS:
        raise ValueError(f"ingestion.metadata.category_paths must be one of {CATEGORY_PATHS}, got {keep!r}")
    cleaned = [clean_path(path or ()) for path in paths or ()]
    if keep == "longest":
        return max(cleaned, key=len, default=[]) if cleaned else []
    return list(dict.fromkeys(label for path in cleaned for label in path))


def map_list_values(lists: pa.Array | pa.ChunkedArray, fn: Callable[[pa.Array], pa.Array]) -> pa.ListArray:
    """Apply an Arrow function to the strings of a list<string> column; drop empty results."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lists = pc.fill_null(lists, pa.scalar([], type=lists.type))
    flat = pc.fill_null(fn(pc.list_flatten(lists)), "")
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(lists).to_numpy()
    counts = np.bincount(parents[keep], minlength=len(lists))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))


def full_size_urls(urls: pa.Array | pa.ChunkedArray, upgrade_thumbnails: bool) -> pa.ListArray:
    """Trimmed, non-empty image URLs per row; thumbnails rewritten to the full-size image when asked."""

    def fix(flat: pa.Array) -> pa.Array:
        flat = pc.utf8_trim_whitespace(flat)
        return pc.replace_substring_regex(flat, THUMBNAIL_PATTERN, r".\1") if upgrade_thumbnails else flat

    return map_list_values(urls, fix)


def first_non_empty_list(*columns: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Row-wise the first column whose list is non-empty (e.g. high-resolution URLs before thumbnails)."""
    chosen = None
    for column in reversed(columns):
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        column = pc.fill_null(column, pa.scalar([], type=column.type))
        if chosen is None:
            chosen = column
        else:
            chosen = pc.if_else(pc.greater(pc.list_value_length(column), 0), column, chosen)
    return chosen
