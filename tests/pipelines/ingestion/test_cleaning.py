"""Field cleaning (HTML, entities, whitespace, category paths, image URLs) and format detection rules."""

from __future__ import annotations

import html
import unicodedata

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maf_pipeline.pipelines.ingestion import cleaning
from maf_pipeline.pipelines.ingestion.cleaning import (
    clean_label,
    clean_path,
    clean_text,
    first_non_empty_list,
    full_size_urls,
    join_text,
    merge_paths,
)
from maf_pipeline.pipelines.ingestion.formats import detect_format
from maf_pipeline.pipelines.ingestion.stream import IngestionError


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ('<span class="a-size-medium a-color-secondary"', ""),
        ('<span class="a-size-medium a-color-base">Wrap  Dress</span>', "Wrap Dress"),
        ("Shoes &amp; Boots", "Shoes & Boots"),
        ("&lt;b&gt;bold&lt;/b&gt; text", "bold text"),
        ("size < 5 and > 2", "size < 5 and > 2"),
        ("a\u00a0b\n\tc  ", "a b c"),
        ("caf&eacute; &#39;x&#39;", "café 'x'"),
        ("<p>one</p><p>two</p>", "one two"),
        ("<!-- note -->kept", "kept"),
        (None, ""),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(pa.array([raw], type=pa.string())).to_pylist() == [clean]


def test_join_text_skips_empty_parts():
    joined = join_text([pa.array(["Title", "", "T"]), pa.array(["desc", "only desc", ""])])
    assert joined.to_pylist() == ["Title desc", "only desc", "T"]


def test_category_labels_and_paths():
    assert clean_label("Arts, Music &amp; Photography") == "Arts, Music & Photography"
    assert (
        clean_label('<img src="https://x/y.png" class="nav-categ-image" alt="AMAZON FASHION"/>')
        == "AMAZON FASHION"
    )
    assert clean_path(["A", "", " ", None, "B &amp; C", "A", "</span></span>"]) == ["A", "B & C"]
    paths = [["A", "B"], ["C", "D", "E"], ["F", "G", "H"], ["A", "D"]]
    assert merge_paths(paths, "longest") == ["C", "D", "E"]
    assert merge_paths(paths) == ["A", "B", "C", "D", "E", "F", "G", "H"]  # all paths, in order, each once
    assert merge_paths([]) == merge_paths(None) == merge_paths(None, "longest") == []


def test_image_urls_prefer_full_size():
    urls = pa.array(
        [
            ["https://i/I/51Iph04Jy3L._SX38_SY50_CR,0,0,38,50_.jpg", "", " https://i/I/x._SY300_.png "],
            None,
            ["https://i/I/plain.jpg", "https://i/I/41HSPSRZwZL._SX35_SY46.jpg", "https://i/I/a.b/c.jpg"],
        ],
        type=pa.list_(pa.string()),
    ).slice(0)
    assert full_size_urls(urls, True).to_pylist() == [
        ["https://i/I/51Iph04Jy3L.jpg", "https://i/I/x.png"],
        [],
        ["https://i/I/plain.jpg", "https://i/I/41HSPSRZwZL.jpg", "https://i/I/a.b/c.jpg"],
    ]
    assert full_size_urls(urls, False).to_pylist()[0] == [
        "https://i/I/51Iph04Jy3L._SX38_SY50_CR,0,0,38,50_.jpg",
        "https://i/I/x._SY300_.png",
    ]
    # a sliced input (offsets not starting at 0) keeps its rows
    assert full_size_urls(urls.slice(2), True).to_pylist()[0][0] == "https://i/I/plain.jpg"


def test_first_non_empty_list():
    t = pa.list_(pa.string())
    high = pa.array([["h"], [], None], type=t)
    low = pa.array([["l"], ["l2"], []], type=t)
    thumb = pa.array([["t"], ["t2"], ["t3"]], type=t)
    assert first_non_empty_list(high, low, thumb).to_pylist() == [["h"], ["l2"], ["t3"]]


@pytest.mark.parametrize(
    ("keys", "kind", "expected"),
    [
        ({"reviewerID", "asin", "overall", "unixReviewTime", "verified", "style"}, "reviews", "2018"),
        ({"reviewerID", "asin", "overall", "unixReviewTime", "helpful"}, "reviews", "2014"),
        ({"user_id", "parent_asin", "asin", "rating", "timestamp", "helpful_vote"}, "reviews", "2023"),
        ({"asin", "title", "category", "image", "main_cat"}, "metadata", "2018"),
        ({"asin", "title", "imageURL", "imageURLHighRes", "category"}, "metadata", "2018"),
        ({"asin", "title", "imUrl", "categories", "salesRank"}, "metadata", "2014"),
        ({"parent_asin", "main_category", "images", "categories", "features"}, "metadata", "2023"),
    ],
)
def test_detect_format(keys, kind, expected):
    records = [dict.fromkeys(keys, "x") for _ in range(3)]
    assert detect_format(records, kind, False, "f.json", 3) == expected


def test_detect_format_python_literals_and_failures():
    assert detect_format([{"asin": "1"}], "metadata", True, "m.json", 1) == "2014"
    with pytest.raises(IngestionError, match=r"f\.json: unknown reviews format.*\['a', 'b'\]"):
        detect_format([{"a": 1, "b": 2}], "reviews", False, "f.json", 1)
    with pytest.raises(IngestionError, match="none of the first 4 non-blank lines"):
        detect_format([], "metadata", False, "f.json", 4)


def _clean_text_on_every_row(values: pa.Array) -> pa.Array:
    """The cleaning with each regex run over every row (what clean_text did before it masked the rows)."""
    values = pc.fill_null(values, "")
    values = pc.replace_substring_regex(values, cleaning.TAG_PATTERN, " ")
    values = pa.array(
        [cleaning._TAG_RE.sub(" ", html.unescape(v)) if "&" in v else v for v in values.to_pylist()],
        pa.string(),
    )
    values = pc.replace_substring_regex(values, cleaning._WHITESPACE, " ")
    values = pc.utf8_trim_whitespace(values)
    return pa.array([unicodedata.normalize("NFC", v) for v in values.to_pylist()], pa.string())


_PIECES = ["a", "Dress", " ", "  ", "\t", "\n", "\r", "\v", "\f", "\u00a0", "\u2009", "\u3000",
           "\u0085", "<b>", "</span>", "<br/>", "< 5", "&amp;", "&lt;i&gt;", "&", "é", "\u65e5\u672c",
           "\u200b", ">", "e\u0301", "\u0301"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.lists(st.sampled_from(_PIECES), max_size=12).map("".join)), max_size=40)
)
def test_masked_cleaning_equals_the_regexes_on_every_row(texts):
    values = pa.array(texts, pa.string())
    assert clean_text(values).to_pylist() == _clean_text_on_every_row(values).to_pylist()
    sliced = values[3:]  # arrays with an offset (slices of a block) take the same path
    assert clean_text(sliced).to_pylist() == _clean_text_on_every_row(sliced).to_pylist()
