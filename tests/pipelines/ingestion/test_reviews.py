"""``ingest_reviews``: the three formats, detection and forcing, the date window, and every bad-input case."""

from __future__ import annotations

import gzip
import json
import logging
import re

import pandas as pd
import pytest

from maf_pipeline.pipelines.ingestion.nodes import ingest_reviews, window_bounds
from maf_pipeline.pipelines.ingestion.stream import IngestionError

from .raw_files import OPEN_WINDOW, SMALL_BLOCKS, review_2014, review_2018, review_2023

T2016 = 1_451_606_400  # 2016-01-01T00:00:00Z
T2018 = 1_514_764_800  # 2018-01-01T00:00:00Z


def _expected(rows: list[tuple[str, str, float, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "rating": pd.Series([r[2] for r in rows], dtype="float32"),
            "timestamp": pd.to_datetime([r[3] for r in rows], unit="s", utc=True).as_unit("ns"),
        }
    )


def _assert_frame(actual: pd.DataFrame, rows: list[tuple[str, str, float, int]]) -> None:
    expected = _expected(rows)
    assert list(actual.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert str(actual["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert actual["rating"].dtype == "float32"
    assert actual["user_id"].tolist() == expected["user_id"].tolist()
    assert actual["item_id"].tolist() == expected["item_id"].tolist()
    assert actual["rating"].tolist() == expected["rating"].tolist()
    assert actual["timestamp"].tolist() == expected["timestamp"].tolist()


ROWS = [
    ("U1", "0000031887", 5.0, T2016 + 10),
    ("U2", "B00ABC", 3.0, T2016 + 99_999),
    ("U1", "B00XYZ", 1.0, T2018 - 1),
]


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
@pytest.mark.parametrize(
    ("fmt", "make"),
    [
        ("2018", lambda u, i, r, t: review_2018(u, i, r, t)),
        ("2014", lambda u, i, r, t: review_2014(u, i, r, t)),
        ("2023", lambda u, i, r, t: review_2023(u, i, r, t * 1000)),
    ],
)
def test_each_format_plain_and_gzip(write_raw, fmt, make, suffix):
    source = write_raw(f"reviews_{fmt}{suffix}", [make(*row) for row in ROWS])
    frame, report = ingest_reviews(source, {}, OPEN_WINDOW)
    _assert_frame(frame, ROWS)
    assert report["format"] == fmt
    assert report["format_detected"] == fmt
    assert report["compression"] == ("gzip" if suffix.endswith(".gz") else "none")
    assert (report["lines_read"], report["kept"], report["outside_window"]) == (3, 3, 0)
    assert report["skipped"] == {"malformed": 0, "missing_field": 0, "bad_value": 0, "bad_encoding": 0}
    assert report["file"] == source.name


def test_all_digit_asin_keeps_leading_zeros(write_raw):
    source = write_raw(
        "r.json", [review_2018("U1", "0000031887", 4.0, T2016), review_2018("U2", "0123", 4.0, T2016)]
    )
    frame, _ = ingest_reviews(source, {}, OPEN_WINDOW)
    assert frame["item_id"].tolist() == ["0000031887", "0123"]
    assert pd.api.types.is_string_dtype(frame["item_id"])


def test_forcing_a_format(write_raw):
    source = write_raw("r.json", [review_2018(*row) for row in ROWS])
    frame, report = ingest_reviews(source, {"format": "2014"}, OPEN_WINDOW)  # same fields: reads fine
    _assert_frame(frame, ROWS)
    assert report["format"] == "2014"
    assert report["format_detected"] is None
    # forcing the wrong family: every line lacks the 2023 keys, so the bad share is 100%
    with pytest.raises(IngestionError, match=r"r\.json: 3 of 3 lines .*missing_field: 3"):
        ingest_reviews(source, {"format": "2023"}, OPEN_WINDOW)
    with pytest.raises(ValueError, match=r"ingestion\.format = '2020'"):
        ingest_reviews(source, {"format": "2020"}, OPEN_WINDOW)


def test_date_window_is_inclusive_and_applied_while_reading(write_raw):
    stamps = [T2016 - 1, T2016, T2018 - 1, T2018, 0, 2_000_000_000]
    records = [review_2018(f"U{i}", "B1", 5.0, t) for i, t in enumerate(stamps)]
    frame, report = ingest_reviews(
        write_raw("r.json", records), {}, {"start": "2016-01-01", "end": "2017-12-31"}
    )
    assert frame["user_id"].tolist() == ["U1", "U2"]
    assert report["outside_window"] == 4
    assert report["kept"] == 2
    assert report["date_window"] == {
        "start": "2016-01-01T00:00:00+00:00",
        "end_exclusive": "2018-01-01T00:00:00+00:00",
    }
    # milliseconds (2023) against the same window, and open-ended sides
    records = [review_2023(f"U{i}", "B1", 5.0, t * 1000) for i, t in enumerate(stamps)]
    source = write_raw("r23.json", records)
    assert ingest_reviews(source, {}, {"start": "2016-01-01", "end": "2017-12-31"})[0][
        "user_id"
    ].tolist() == [
        "U1",
        "U2",
    ]
    assert ingest_reviews(source, {}, {"start": "2016-01-01", "end": None})[0]["user_id"].tolist() == [
        "U1",
        "U2",
        "U3",
        "U5",
    ]
    assert len(ingest_reviews(source, {}, None)[0]) == len(stamps)


def test_window_bounds():
    day = 86_400 * 10**9
    assert window_bounds({"start": "2016-01-01", "end": "2016-01-01"}) == (T2016 * 10**9, T2016 * 10**9 + day)
    assert window_bounds({"start": None, "end": "2016-01-01T12:00:00"}) == (
        None,
        T2016 * 10**9 + day // 2 + 1,
    )
    assert window_bounds({}) == (None, None)
    with pytest.raises(ValueError, match="empty"):
        window_bounds({"start": "2017-01-01", "end": "2016-01-01"})


def test_malformed_lines_under_the_threshold_are_skipped_and_reported(write_raw, caplog):
    records = [review_2018(f"U{i}", "B1", 4.0, T2016 + i) for i in range(300)]
    records[9] = '{"overall": 5.0, "reviewerID": "X", "asin": '  # truncated line (line 10)
    records[149] = "garbage that is not json"  # line 150
    with caplog.at_level(logging.WARNING, logger="maf_pipeline.pipelines.ingestion"):
        frame, report = ingest_reviews(write_raw("dirty.json.gz", records), {}, OPEN_WINDOW)
    assert len(frame) == 298
    assert "X" not in set(frame["user_id"])
    assert report["skipped"]["malformed"] == 2
    assert report["first_bad_lines"] == [
        {"line": 10, "reason": "malformed"},
        {"line": 150, "reason": "malformed"},
    ]
    assert report["lines_read"] == 300
    assert any("dirty.json.gz" in r.message and "[10, 150]" in r.message for r in caplog.records)


def test_too_many_bad_lines_fail_naming_the_file(write_raw):
    records = [review_2018(f"U{i}", "B1", 4.0, T2016) for i in range(50)] + ["{broken"]
    source = write_raw("bad_reviews.json", records)
    with pytest.raises(
        IngestionError, match=r"bad_reviews\.json: 1 of 51 lines \(1\.96%\).*max_bad_fraction"
    ):
        ingest_reviews(source, {}, OPEN_WINDOW)
    frame, report = ingest_reviews(source, {"max_bad_fraction": 0.05}, OPEN_WINDOW)
    assert len(frame) == 50
    assert report["skipped_share"] == pytest.approx(1 / 51, abs=1e-6)


def test_missing_fields_and_bad_values_are_counted_with_line_numbers(write_raw):
    good = [review_2018(f"U{i}", "B1", 4.0, T2016) for i in range(200)]
    no_user = review_2018("U", "B1", 4.0, T2016)
    del no_user["reviewerID"]
    no_time = review_2018("U", "B1", 4.0, T2016)
    del no_time["unixReviewTime"]
    empty_asin = review_2018("U", "", 4.0, T2016)
    null_rating = review_2018("U", "B1", None, T2016)
    bad_rating = review_2018("U", "B1", "five", T2016)
    string_rating = review_2018("STR", "B1", "4.0", T2016)  # lenient: a numeric string is a number
    records = [*good[:5], no_user, no_time, empty_asin, null_rating, bad_rating, string_rating, *good[5:]]
    frame, report = ingest_reviews(write_raw("r.json", records), {"max_bad_fraction": 0.05}, OPEN_WINDOW)
    assert report["skipped"] == {"malformed": 0, "missing_field": 4, "bad_value": 1, "bad_encoding": 0}
    assert report["first_bad_lines"] == [
        {"line": 6, "reason": "missing_field"},
        {"line": 7, "reason": "missing_field"},
        {"line": 8, "reason": "missing_field"},
        {"line": 9, "reason": "missing_field"},
        {"line": 10, "reason": "bad_value"},
    ]
    assert len(frame) == 201
    assert frame.loc[frame["user_id"] == "STR", "rating"].tolist() == [4.0]


def test_style_key_first_seen_late_and_vote_strings_do_not_break_parsing(write_raw):
    records = [review_2018(f"U{i}", f"B{i % 7}", 4.0, T2016 + i) for i in range(3000)]
    for i in range(2500, 3000, 3):  # late, with varying sub-keys and types
        records[i]["style"] = (
            {"Size:": " Large", "Color:": " Black"} if i % 2 else {"Format:": " Kindle", "n": 3}
        )
        records[i]["vote"] = "1,234"
    frame, report = ingest_reviews(write_raw("late.json.gz", records), SMALL_BLOCKS, OPEN_WINDOW)
    assert len(frame) == 3000
    assert report["fallback_bytes"] == 0  # Arrow parsed every block: unknown keys are ignored, not typed
    assert frame["user_id"].tolist() == [f"U{i}" for i in range(3000)]


def test_line_numbers_stay_right_across_blocks_and_bisection(write_raw):
    records = [review_2018(f"U{i}", "B1", 4.0, T2016) for i in range(4000)]
    bad_lines = [1, 777, 1500, 3999, 4000]
    for line in bad_lines:
        records[line - 1] = "{not json"
    records.insert(2000, "")  # a blank line shifts the numbering but is not a record
    bad_after_blank = [n if n <= 2000 else n + 1 for n in bad_lines]
    frame, report = ingest_reviews(
        write_raw("r.json", records), {**SMALL_BLOCKS, "max_bad_fraction": 0.01}, None
    )
    assert [b["line"] for b in report["first_bad_lines"]] == bad_after_blank
    assert report["lines_read"] == 4000
    assert len(frame) == 4000 - len(bad_lines)
    assert sorted(set(frame["user_id"])) == sorted(f"U{i}" for i in range(4000) if i + 1 not in bad_lines)


def test_long_lines_crlf_and_missing_final_newline(write_raw):
    records = [
        review_2018("U1", "B1", 4.0, T2016, reviewText="x" * 200_000),
        review_2018("U2", "B2", 2.0, T2016),
    ]
    source = write_raw("r.json", records, newline="\r\n", trailing_newline=False)
    frame, report = ingest_reviews(source, SMALL_BLOCKS, OPEN_WINDOW)
    assert frame["user_id"].tolist() == ["U1", "U2"]
    assert report["skipped"] == {"malformed": 0, "missing_field": 0, "bad_value": 0, "bad_encoding": 0}


def test_multi_member_gzip_is_read_whole(tmp_path):
    from maf_pipeline.datasets import RawSource

    path = tmp_path / "multi.json.gz"
    parts = [json.dumps(review_2018(f"U{i}", "B1", 4.0, T2016)) + "\n" for i in range(3)]
    path.write_bytes(b"".join(gzip.compress(p.encode(), mtime=0) for p in parts))
    frame, _ = ingest_reviews(RawSource(str(path)), {}, OPEN_WINDOW)
    assert frame["user_id"].tolist() == ["U0", "U1", "U2"]


def test_truncated_and_corrupt_gzip_fail_with_the_file_name(tmp_path):
    from maf_pipeline.datasets import RawSource

    lines = "".join(json.dumps(review_2018(f"U{i}", "B1", 4.0, T2016 + i)) + "\n" for i in range(5000))
    data = gzip.compress(lines.encode(), mtime=0)
    truncated = tmp_path / "cut.json.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(IngestionError, match=r"cut\.json\.gz: truncated gzip"):
        ingest_reviews(RawSource(str(truncated)), {}, OPEN_WINDOW)
    corrupt = tmp_path / "corrupt.json.gz"
    corrupt.write_bytes(data[:20] + bytes(255 - b for b in data[20:200]) + data[200:])
    with pytest.raises(IngestionError, match=r"corrupt\.json\.gz: "):
        ingest_reviews(RawSource(str(corrupt)), {}, OPEN_WINDOW)


def test_unknown_format_fails_listing_the_keys_seen(write_raw):
    source = write_raw("other.json", [{"id": 1, "user": "a", "stars": 5}, {"id": 2, "user": "b", "stars": 4}])
    with pytest.raises(
        IngestionError, match=r"other\.json: unknown reviews format.*\['id', 'stars', 'user'\]"
    ):
        ingest_reviews(source, {}, OPEN_WINDOW)
    with pytest.raises(IngestionError, match=r"not json\.txt: unknown reviews format: none of the first 2"):
        ingest_reviews(write_raw("not json.txt", ["hello", "world"]), {}, OPEN_WINDOW)
    # a metadata file handed to the reviews node is an unknown reviews format too
    meta = write_raw("meta.json", [{"asin": "B1", "title": "t", "category": ["A"], "main_cat": "A"}])
    with pytest.raises(IngestionError, match="unknown reviews format"):
        ingest_reviews(meta, {}, OPEN_WINDOW)


@pytest.mark.parametrize(
    ("name", "content"), [("empty.json", b""), ("empty.json.gz", gzip.compress(b"", mtime=0))]
)
def test_empty_file_fails_clearly(tmp_path, name, content):
    from maf_pipeline.datasets import RawSource

    (tmp_path / name).write_bytes(content)
    with pytest.raises(IngestionError, match=re.escape(name) + ": the file is empty"):
        ingest_reviews(RawSource(str(tmp_path / name)), {}, OPEN_WINDOW)


def test_blank_only_file_fails_as_empty(write_raw):
    with pytest.raises(IngestionError, match="is empty"):
        ingest_reviews(write_raw("blank.json", ["", "   ", ""]), {}, OPEN_WINDOW)
