"""The streaming layer: block cutting, line numbers, Arrow-first parsing with bisection, lenient coercion."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from maf_pipeline.datasets import RawSource
from maf_pipeline.pipelines.ingestion.stream import (
    Block,
    BlockParser,
    BlockReader,
    IngestionError,
    ParseStats,
    coerce,
    first_records,
)

SCHEMA = pa.schema(
    [("id", pa.string()), ("n", pa.float64()), ("t", pa.int64()), ("tags", pa.list_(pa.string()))]
)


def _lines(n: int, start: int = 0) -> list[str]:
    return [
        json.dumps({"id": f"{i:06d}", "n": i / 2, "t": i, "tags": ["a"], "pad": "x" * 100})
        for i in range(start, n)
    ]


@pytest.mark.parametrize("gzipped", [False, True])
def test_blocks_hold_whole_lines_with_correct_first_line_numbers(tmp_path, gzipped):
    text = "\n".join(_lines(5000)) + "\n"
    path = tmp_path / ("f.json.gz" if gzipped else "f.json")
    path.write_bytes(gzip.compress(text.encode(), mtime=0) if gzipped else text.encode())
    with BlockReader(RawSource(str(path)), block_bytes=64 * 1024, chunk_bytes=10_000) as reader:
        blocks = list(reader)
    assert len(blocks) > 5
    assert b"".join(b.data for b in blocks) == text.encode()
    line = 1
    for block in blocks:
        assert block.data.endswith(b"\n")
        assert block.first_line == line
        assert json.loads(block.data.split(b"\n", 1)[0])["id"] == f"{line - 1:06d}"
        line += block.data.count(b"\n")
    assert reader.compression == ("gzip" if gzipped else "none")
    assert reader.bytes_out == len(text.encode())


def test_reader_stops_cleanly_when_the_consumer_leaves_early(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("\n".join(_lines(20_000)) + "\n")
    with BlockReader(RawSource(str(path)), block_bytes=64 * 1024) as reader:
        first = next(iter(reader))
    assert first.first_line == 1
    assert reader._thread is None  # joined, not leaked


def test_bisection_sends_only_small_pieces_through_the_line_parser():
    lines = _lines(20_000)
    lines[12_345] = '{"id": "broken", "n": '
    lines[17_000] = json.dumps({"id": "typed", "n": "3.5", "t": "7", "tags": "solo"})  # Arrow rejects types
    data = ("\n".join(lines) + "\n").encode()
    stats = ParseStats()
    parser = BlockParser(SCHEMA, stats, min_bisect_bytes=16 * 1024)
    pieces = parser.parse(Block(data, 101, 0))
    table = pa.concat_tables(p.table for p in pieces)
    assert table.num_rows == 19_999
    assert stats.lines == 20_000
    assert stats.skipped == {"malformed": 1}
    assert stats.examples == [(101 + 12_345, "malformed")]
    assert stats.fallback_bytes < 0.01 * len(data)
    row = table.to_pylist()[17_000 - 1]
    assert row == {"id": "typed", "n": 3.5, "t": 7, "tags": ["solo"]}
    # rows keep file order and every piece knows the file line of each of its rows
    assert table.column("id").to_pylist()[:3] == ["000000", "000001", "000002"]
    numbers = [n for p in pieces for n in p.line_numbers()]
    assert numbers == [101 + i for i in range(20_000) if i != 12_345]


def test_python_literal_lines_when_allowed():
    data = b"{'id': '0001', 'n': 1, 't': 2, 'tags': ('a', 'b')}\n{'id': 'x', 'n'}\n"
    stats = ParseStats()
    pieces = BlockParser(SCHEMA, stats, allow_literals=True, arrow_first=False).parse(Block(data, 1, 0))
    assert pieces[0].table.to_pylist() == [{"id": "0001", "n": 1.0, "t": 2, "tags": ["a", "b"]}]
    assert stats.examples == [(2, "malformed")]
    stats = ParseStats()
    BlockParser(SCHEMA, stats).parse(Block(data, 1, 0))
    assert stats.skipped["malformed"] == 2  # JSON only


def test_first_records_detects_python_literals():
    records, tried, literal = first_records(b'\n{"a": 1}\n{\'b\': 2}\nnope\n{"c": 3}\n', max_records=3)
    assert records == [{"a": 1}, {"b": 2}]
    assert (tried, literal) == (3, True)


@pytest.mark.parametrize(
    ("value", "arrow_type", "expected"),
    [
        ("0001", pa.string(), "0001"),
        (12, pa.string(), "12"),
        (["a", "b"], pa.string(), "a b"),
        ("4.0", pa.float64(), 4.0),
        (5, pa.float64(), 5.0),
        ("1,234", pa.int64(), 1234),
        (1.0e9, pa.int64(), 1_000_000_000),
        ("17", pa.int64(), 17),
        ("solo", pa.list_(pa.string()), ["solo"]),
        (["a", None, 3, {"x": 1}], pa.list_(pa.string()), ["a", "3"]),
        (["a", "b"], pa.list_(pa.list_(pa.string())), [["a", "b"]]),
        (
            {"thumb": "t", "x": 1},
            pa.struct([("thumb", pa.string()), ("large", pa.string())]),
            {"thumb": "t", "large": None},
        ),
        (None, pa.int64(), None),
    ],
)
def test_coerce(value, arrow_type, expected):
    assert coerce(value, arrow_type) == expected


@pytest.mark.parametrize(
    ("value", "arrow_type"),
    [
        ("five", pa.float64()),
        (True, pa.float64()),
        (1.5, pa.int64()),
        ({"a": 1}, pa.string()),
        ([1], pa.int64()),
    ],
)
def test_coerce_rejects_impossible_values(value, arrow_type):
    with pytest.raises((TypeError, ValueError)):
        coerce(value, arrow_type)


def test_missing_file_is_reported_by_name(tmp_path):
    with (
        pytest.raises(IngestionError, match=r"nothere\.json"),
        BlockReader(RawSource(str(tmp_path / "nothere.json")), 1 << 20) as r,
    ):
        list(r)


def test_memory_is_bounded_by_blocks_not_by_file_size(tmp_path):
    """Peak Arrow and Python allocations stay at a few blocks whether the file read has 8 or 32 MB."""
    script = textwrap.dedent(
        """
        import gzip, importlib.util, json, sys, tracemalloc
        from pathlib import Path
        import pyarrow as pa
        import maf_pipeline
        from maf_pipeline.pipelines.ingestion.nodes import ingest_reviews

        # RawSource from its file: the maf_pipeline.datasets package would import torch (slow to start)
        spec = importlib.util.spec_from_file_location(
            "raw_file", Path(maf_pipeline.__file__).parent / "datasets" / "raw_file.py"
        )
        raw_file = importlib.util.module_from_spec(spec)
        sys.modules["raw_file"] = raw_file
        spec.loader.exec_module(raw_file)
        line = {"overall": 5, "reviewerID": "A", "asin": "B", "reviewText": "y" * 400, "unixReviewTime": 9}
        one = (json.dumps(line) + "\\n").encode()
        tracemalloc.start()
        for mb in (8, 32):
            path = Path(sys.argv[1]) / f"r{mb}.json.gz"
            path.write_bytes(gzip.compress(one * int(mb * 1e6 / len(one)), compresslevel=1))
            tracemalloc.reset_peak()
            frame, report = ingest_reviews(
                raw_file.RawSource(str(path)),
                {"block_size_mb": 0.5},
                {"start": "2016-01-01", "end": None},
            )
            assert len(frame) == 0 and report["outside_window"] == report["lines_read"] > 0
            print(pa.default_memory_pool().max_memory(), tracemalloc.get_traced_memory()[1])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True
    )
    (arrow_small, py_small), (arrow_large, py_large) = (
        map(int, r.split()) for r in out.stdout.splitlines()[-2:]
    )
    print(f"peak Arrow / Python MB: {arrow_small / 1e6:.1f} / {py_small / 1e6:.1f} reading 8 MB, ", end="")
    print(f"{arrow_large / 1e6:.1f} / {py_large / 1e6:.1f} reading 32 MB")
    assert arrow_large < 1.25 * arrow_small + (1 << 20)
    assert py_large < 1.25 * py_small + (1 << 20)
    assert arrow_large + py_large < 12 << 20  # 32 MB were read in 0.5 MB blocks
