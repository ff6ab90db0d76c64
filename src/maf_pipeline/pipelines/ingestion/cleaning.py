"""Cleaning of metadata fields: HTML stripped from text, category labels unescaped, image URLs at full size.

Text is cleaned column-wise with Arrow compute (RE2 regexes); only values holding an HTML entity go through
Python's ``html.unescape``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Sequence

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
_WS_RE = re.compile(r"\s+")
_ALT_RE = re.compile(r"""alt=["']([^"']*)["']""")


def clean_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Strip HTML tags, unescape entities and normalise whitespace; nulls become empty strings."""
    values = pc.fill_null(values, "")
    values = pc.replace_substring_regex(values, TAG_PATTERN, " ")
    values = _unescape(values)
    values = pc.replace_substring_regex(values, _WHITESPACE, " ")
    return pc.utf8_trim_whitespace(values)


def _unescape(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``html.unescape`` on the values that contain "&" (then tags again: "&lt;b&gt;" is markup too)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    mask = pc.match_substring(values, "&")
    if not pc.any(mask).as_py():
        return values
    replaced = [_TAG_RE.sub(" ", html.unescape(v)) for v in values.filter(mask).to_pylist()]
    return pc.replace_with_mask(values, mask, pa.array(replaced, type=values.type))


def join_text(parts: Sequence[pa.Array]) -> pa.Array:
    """Join already-clean text columns with single spaces, skipping empty parts."""
    joined = pc.binary_join_element_wise(*parts, " ")
    joined = pc.replace_substring_regex(joined, " {2,}", " ")
    return pc.utf8_trim_whitespace(joined)


def join_list(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Join a list<string> column into one string per row (null and empty lists give "")."""
    return pc.fill_null(pc.binary_join(values, " "), "")


def clean_label(label: str) -> str:
    """One category label: entities unescaped, tags dropped (an ``<img alt=...>`` gives its alt text)."""
    label = html.unescape(label)
    if "<" in label:
        alt = _ALT_RE.search(label)
        label = alt.group(1) if alt else _TAG_RE.sub(" ", label)
    return _WS_RE.sub(" ", label).strip()


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


def most_specific_path(paths: Sequence[Sequence[str] | None] | None) -> list[str]:
    """From the 2014 list of category paths, the longest (most specific) one, the first among equals."""
    best: list[str] = []
    for path in paths or ():
        cleaned = clean_path(path or ())
        if len(cleaned) > len(best):
            best = cleaned
    return best


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
