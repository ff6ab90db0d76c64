"""Interaction-only inputs: RecBole atomic files (.inter + .item) and the SASRec ``user item`` text format."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from maf_pipeline.datasets import RawSource
from maf_pipeline.pipelines.ingestion.interaction_formats import (
    ingest_interaction_files,
    read_atomic,
    synthetic_timestamps,
)
from maf_pipeline.pipelines.ingestion.pipeline import create_interaction_only_pipeline
from maf_pipeline.pipelines.ingestion_interactions import create_pipeline as registered_pipeline

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t242\t3\t881250949\n"
    "186\t302\t3\t891717742\n"
    "196\t0377\t1\t878887116\n"
    "22\t242\t5.5\t1514764800.5\n"  # 2018-01-01 00:00:00.5 UTC
)
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "242\tKolya\t1996\tComedy\n"
    "302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
    '999\t"Quoted" Title\t1990\tDrama Drama\n'
)
OPEN_WINDOW = {"start": None, "end": None}


def write(path: Path, text: str, compress: bool = False) -> RawSource:
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return RawSource(str(path))


def test_atomic_header_and_types() -> None:
    frame, fields = read_atomic(INTER)
    assert fields == {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
    assert frame["item_id"].tolist() == ["242", "302", "0377", "242"]  # tokens stay strings (leading zero)
    with pytest.raises(ValueError, match="name:type"):
        read_atomic("user_id\titem_id\n1\t2\n")


@pytest.mark.parametrize("compress", [False, True])
def test_recbole_inter_and_item_files(tmp_path: Path, compress: bool) -> None:
    suffix = ".inter.gz" if compress else ".inter"
    source = write(tmp_path / f"ml-tiny{suffix}", INTER, compress)
    write(tmp_path / "ml-tiny.item", ITEM)
    interactions, items, report = ingest_interaction_files(source, {}, OPEN_WINDOW)
    assert list(interactions.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert interactions["rating"].dtype == "float32" and interactions["rating"].tolist() == [3, 3, 1, 5.5]
    assert str(interactions["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert interactions["timestamp"].iloc[0] == pd.Timestamp(881250949, unit="s", tz="UTC")
    assert interactions["timestamp"].iloc[3] == pd.Timestamp("2018-01-01 00:00:00.5", tz="UTC")
    assert list(items.columns) == ["item_id", "title", "text", "categories", "image_urls", "brand"]
    by_id = items.set_index("item_id")
    assert (
        by_id.loc["302", "title"] == "L.A. Confidential" and by_id.loc["302", "text"] == "L.A. Confidential"
    )
    assert list(by_id.loc["302", "categories"]) == ["Crime", "Film-Noir", "Mystery", "Thriller"]
    assert list(by_id.loc["999", "categories"]) == ["Drama"]  # deduplicated labels
    assert by_id.loc["999", "title"] == '"Quoted" Title'  # quotes are data
    assert by_id.loc["0377", "title"] == "" and list(by_id.loc["0377", "categories"]) == []  # no .item row
    assert list(by_id.loc["242", "image_urls"]) == []
    assert report["format"] == "recbole" and report["files"]["items"] == "ml-tiny.item"
    assert report["summary"]["items_with"] == {"title": 3, "text": 3, "categories": 3}


def test_date_window_applies_to_real_timestamps_only(tmp_path: Path) -> None:
    source = write(tmp_path / "d.inter", INTER)
    kept, _, report = ingest_interaction_files(source, {}, {"start": "1998-01-01", "end": "2017-12-31"})
    assert kept["user_id"].tolist() == ["186"]  # 1998-04-08; the 2018 and 1997 rows are outside
    assert report["summary"]["outside_window"] == 3
    text = write(tmp_path / "beauty.txt", "1 5\n1 6\n2 5\n")
    windowed, _, report = ingest_interaction_files(text, {}, {"start": "2016-01-01", "end": "2017-12-31"})
    assert len(windowed) == 3 and report["synthetic_timestamps"]


def test_inter_without_optional_columns(tmp_path: Path) -> None:
    source = write(tmp_path / "x.inter", "user_id:token\titem_id:token\nu1\ti1\nu1\ti2\nu2\ti1\n")
    interactions, items, report = ingest_interaction_files(source, {"synthetic_start": "2010-05-01"}, None)
    assert interactions["rating"].tolist() == [1.0, 1.0, 1.0]
    assert interactions["timestamp"].is_monotonic_increasing and interactions["timestamp"].is_unique
    assert interactions["timestamp"].iloc[0] == pd.Timestamp("2010-05-01", tz="UTC")
    assert report["synthetic_timestamps"] and report["files"]["items"] is None
    assert items["item_id"].tolist() == ["i1", "i2"] and (items["text"] == "").all()
    with pytest.raises(ValueError, match="no \\['item_id'\\] column"):
        ingest_interaction_files(write(tmp_path / "y.inter", "user_id:token\tmovie:token\n1\t2\n"), {}, None)


def test_user_item_text_keeps_order_with_synthetic_timestamps(tmp_path: Path) -> None:
    source = write(tmp_path / "Beauty.txt", "1 10\n1 11\n\n2 10\n1 12\n2 13\n")
    interactions, items, report = ingest_interaction_files(source, {"synthetic_step_s": 60}, OPEN_WINDOW)
    assert report["format"] == "user_item" and report["synthetic_timestamps"]
    assert interactions["user_id"].tolist() == ["1", "1", "2", "1", "2"]
    steps = interactions["timestamp"].diff().dropna().unique()
    assert list(steps) == [pd.Timedelta(seconds=60)]
    user1 = interactions[interactions["user_id"] == "1"].sort_values("timestamp")["item_id"].tolist()
    assert user1 == ["10", "11", "12"]  # per-user order = file order
    assert sorted(items["item_id"]) == ["10", "11", "12", "13"]
    with pytest.raises(ValueError, match="do not hold a user and an item"):
        ingest_interaction_files(write(tmp_path / "bad.txt", "1 10\n7\n"), {}, None)
    with pytest.raises(ValueError, match=r"interaction_only\.format = 'csv'"):
        ingest_interaction_files(source, {"format": "csv"}, None)


def test_forced_format_and_synthetic_timestamps(tmp_path: Path) -> None:
    stamps = synthetic_timestamps(3, "2000-01-01", 0.5)
    origin = pd.Timestamp("2000-01-01", tz="UTC")
    assert stamps.tolist() == [origin + pd.Timedelta(seconds=s) for s in (0, 0.5, 1)]
    atomic_txt = write(tmp_path / "atomic.txt", INTER)  # RecBole content under another suffix
    interactions, _, report = ingest_interaction_files(atomic_txt, {"format": "recbole"}, OPEN_WINDOW)
    assert report["format"] == "recbole" and len(interactions) == 4 and not report["synthetic_timestamps"]


def test_pipeline_option_produces_the_contract_tables() -> None:
    pipe = create_interaction_only_pipeline()
    assert pipe.all_outputs() == {"interactions", "items", "ingestion_report"}
    assert pipe.inputs() == {"raw_interactions", "params:ingestion.interaction_only", "params:date_window"}
    assert {n.name for n in registered_pipeline().nodes} == {n.name for n in pipe.nodes}


LINE_PER_USER = "1 10 11 12\n2 11 13\n\n3 10 12 14 11\n"
ATTRIBUTES = '{"10": [1, 2], "11": [2, 3, 3], "12": [], "99": [4]}'


def test_line_per_user_file_is_detected_with_its_attributes(tmp_path: Path) -> None:
    source = write(tmp_path / "Beauty.txt", LINE_PER_USER)
    write(tmp_path / "Beauty_item2attributes.json", ATTRIBUTES)
    interactions, items, report = ingest_interaction_files(source, {}, OPEN_WINDOW)
    assert report["format"] == "user_sequence" and report["synthetic_timestamps"]
    assert len(interactions) == 9  # every item of every line, not only the first one
    assert interactions["timestamp"].is_monotonic_increasing and interactions["timestamp"].is_unique
    user3 = interactions[interactions["user_id"] == "3"].sort_values("timestamp")["item_id"].tolist()
    assert user3 == ["10", "12", "14", "11"]  # per-user order = order on the line
    assert report["summary"]["users"] == 3 and report["summary"]["items"] == 5
    assert report["summary"]["lines"] == 3 and report["summary"]["malformed_lines"] == 0
    by_id = items.set_index("item_id")
    assert list(by_id.loc["10", "categories"]) == ["1", "2"]
    assert list(by_id.loc["11", "categories"]) == ["2", "3"]  # deduplicated
    assert list(by_id.loc["12", "categories"]) == [] and list(by_id.loc["14", "categories"]) == []
    assert "99" not in by_id.index  # attributes of items never interacted with are not items
    assert report["files"]["attributes"] == "Beauty_item2attributes.json"
    assert report["summary"]["attribute_items_not_in_interactions"] == 1
    assert report["summary"]["items_with"]["categories"] == 2


def test_attributes_sibling_is_optional_and_found_for_compressed_files(tmp_path: Path) -> None:
    plain = write(tmp_path / "Toys.txt", LINE_PER_USER)
    _, items, report = ingest_interaction_files(plain, {}, OPEN_WINDOW)
    assert report["files"]["attributes"] is None and items["categories"].map(len).sum() == 0
    packed = write(tmp_path / "Sports.txt.gz", LINE_PER_USER, compress=True)
    write(tmp_path / "Sports_item2attributes.json", ATTRIBUTES)
    interactions, items, report = ingest_interaction_files(packed, {"format": "user_sequence"}, OPEN_WINDOW)
    assert len(interactions) == 9 and report["files"]["attributes"] == "Sports_item2attributes.json"
    write(tmp_path / "Bad_item2attributes.json", "[1, 2]")
    with pytest.raises(ValueError, match="item id -> list of attribute ids"):
        ingest_interaction_files(write(tmp_path / "Bad.txt", LINE_PER_USER), {}, OPEN_WINDOW)


def test_more_fields_than_user_item_are_never_truncated(tmp_path: Path) -> None:
    source = write(tmp_path / "seq.txt", "1 10\n2 11 12 13\n")
    with pytest.raises(ValueError, match=r"lines \[2\] \(of 1\) hold more than a user and an item"):
        ingest_interaction_files(source, {"format": "user_item"}, OPEN_WINDOW)
    interactions, _, report = ingest_interaction_files(source, {}, OPEN_WINDOW)  # auto: line per user
    assert report["format"] == "user_sequence" and len(interactions) == 4
    pairs = write(tmp_path / "pairs.txt", "1 10\n1 11\n2 10\n")
    assert ingest_interaction_files(pairs, {}, OPEN_WINDOW)[2]["format"] == "user_item"


def test_malformed_lines_are_counted_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = "".join(f"{u} {u + 100} {u + 101}\n" for u in range(1, 199))
    text = good[:20] + "7777\n" + good[20:] + "5 1 2\n"  # a user without items; user 5 a second time
    source = write(tmp_path / "users.txt", text)
    interactions, _, report = ingest_interaction_files(source, {}, OPEN_WINDOW)
    assert report["summary"]["lines"] == 200 and report["summary"]["malformed_lines"] == 2
    assert report["first_malformed_lines"][0] == good[:20].count("\n") + 1
    assert report["summary"]["users"] == 198 and len(interactions) == 2 * 198
    assert interactions.loc[interactions["user_id"] == "5", "item_id"].tolist() == ["105", "106"]
    assert "malformed" in caplog.text
    with pytest.raises(ValueError, match="more than max_bad_fraction"):
        ingest_interaction_files(source, {"max_bad_fraction": 0.005}, OPEN_WINDOW)
    pairs_forced = write(
        tmp_path / "pairs.txt", "1 10\n1 11\n1 12\n2 10\n"
    )  # user item read as line per user
    with pytest.raises(ValueError, match="2 of 4 non-blank lines are malformed"):
        ingest_interaction_files(pairs_forced, {"format": "user_sequence"}, OPEN_WINDOW)


@pytest.mark.skipif(
    not (Path(__file__).resolve().parents[3].parent / "shared/data/s3rec-beauty/Beauty.txt").exists(),
    reason="the shared S3-Rec Beauty files are not on this machine",
)
def test_s3rec_beauty_counts() -> None:
    path = Path(__file__).resolve().parents[3].parent / "shared/data/s3rec-beauty/Beauty.txt"
    interactions, items, report = ingest_interaction_files(RawSource(str(path)), {}, None)
    assert report["format"] == "user_sequence" and report["summary"]["malformed_lines"] == 0
    assert (report["summary"]["users"], report["summary"]["items"], len(interactions)) == (
        22363,
        12101,
        198502,
    )
    assert items["categories"].map(len).mean() == pytest.approx(3.72, abs=0.01)  # README: 3.7 per item
