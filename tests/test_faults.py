"""Fault injection: hostile bytes, broken caches, concurrent runs and forged URLs, each on small local data.

Every case of the reliability issue that this module owns: the faults that were mishandled (invalid UTF-8,
millisecond timestamps, a reviews file given as metadata, a BOM before a malformed line, the order of the
first bad lines, truncated cache shards, two runs on one folder, file modes, requests to private
addresses) and the ones already handled, so that they stay handled (CRLF, BOM, multi-member gzip, NUL
bytes, string-typed numbers, 5 MB lines, truncated gzip, empty files, truncated Parquet, decompression
bombs, HTML saved as .jpg, SIGKILL during training, concurrent writers, no pickle, UIs on 127.0.0.1).
A property-based test mixes valid lines with random corruptions. All on CPU, in tmp_path.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from maf_pipeline.datasets import RawSource, SafetensorsDataset
from maf_pipeline.locks import FolderLock, FolderLockedError, atomic_write, lock_path
from maf_pipeline.parameters import filled
from maf_pipeline.pipelines.features import nodes as feature_nodes
from maf_pipeline.pipelines.features.images import acquire_images, download_image, verify_image
from maf_pipeline.pipelines.features.safe_http import HostPolicy, RefusedAddressError, is_public_address
from maf_pipeline.pipelines.features.stores import CacheTable, FeatureCache, ImageFolder
from maf_pipeline.pipelines.ingestion.nodes import ingest_metadata, ingest_reviews
from maf_pipeline.pipelines.ingestion.stream import IngestionError
from maf_pipeline.training import checkpoints as training_checkpoints
from tests.models.synthetic import make_features, make_sequences, small_training, tiny_maf_params, train_tiny

REPO = Path(__file__).resolve().parents[1]
SMALL_BLOCKS = {"block_size_mb": 0.0625}  # 64 kB blocks: small files cross block boundaries
LENIENT = {"max_bad_fraction": 1.0}


# --------------------------------------------------------------------------------------------- helpers
def review(i: int, user: str | None = None, **extra: Any) -> dict[str, Any]:
    """A 2018-format review line (the fields the real files carry)."""
    return {
        "overall": float(1 + i % 5),
        "verified": True,
        "reviewTime": "01 1, 2017",
        "reviewerID": user or f"U{i % 7:03d}",
        "asin": f"B{i:09d}",
        "reviewerName": "Someone",
        "reviewText": "Fits well, nice fabric.",
        "summary": "Nice",
        "unixReviewTime": 1_480_000_000 + 3600 * i,
        **extra,
    }


def meta(i: int, **extra: Any) -> dict[str, Any]:
    """A 2018-format metadata line."""
    return {
        "asin": f"B{i:09d}",
        "title": f"Café dress {i}",
        "category": ["Clothing", "Women", "Dresses"],
        "description": ["A dress."],
        "imageURLHighRes": [f"https://images.example.com/I/{i}.jpg"],
        "brand": "Acme",
        "main_cat": "Fashion",
        **extra,
    }


def encoded(record: Any) -> bytes:
    """One line's bytes: records as UTF-8 JSON (non-ASCII kept raw), bytes and strings verbatim."""
    if isinstance(record, bytes):
        return record
    if isinstance(record, str):
        return record.encode("utf-8")
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def write_lines(path: Path, records: list[Any], newline: bytes = b"\n", prefix: bytes = b"") -> RawSource:
    data = prefix + newline.join(encoded(r) for r in records) + newline
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return RawSource(str(path))


def assert_valid_utf8(frame: pd.DataFrame) -> None:
    """Every string in the frame round-trips through Arrow (an invalid one raises, as in build_id_maps)."""
    for column in frame.columns:
        if frame[column].dtype == object or str(frame[column].dtype).startswith("string"):
            pa.array(frame[column].tolist()).validate(full=True)


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


HOLD_LOCK = """
    import select, sys
    from maf_pipeline.locks import FolderLock
    lock = FolderLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    select.select([sys.stdin], [], [], float(sys.argv[2]))  # until told (a line on stdin) or timed out
    lock.release()
"""


def release_later(holder: subprocess.Popen, seconds: float) -> threading.Timer:
    """Tell a lock holder to release its lock after ``seconds``."""

    def release() -> None:
        holder.stdin.write("release\n")
        holder.stdin.flush()

    timer = threading.Timer(seconds, release)
    timer.start()
    return timer


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[Any]:
    """Start another process that holds the lock of a folder for ``seconds``; yields a starter."""
    procs: list[subprocess.Popen] = []

    def start(folder: Path, seconds: float = 60) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(HOLD_LOCK), str(folder), str(seconds)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# ------------------------------------------------------------------ ingestion: bytes that were mishandled
def test_invalid_utf8_in_an_id_skips_the_line_as_bad_encoding(tmp_path):
    lines = [encoded(review(i)) for i in range(12)]
    lines[3] = lines[3].replace(b'"U003"', b'"AQCOD\xe9CO2SS3ZCI"')
    source = write_lines(tmp_path / "reviews.json", lines)
    frame, report = ingest_reviews(source, LENIENT, None)
    assert len(frame) == 11
    assert report["skipped"]["bad_encoding"] == 1
    assert report["skipped_fields"]["bad_encoding"] == {"reviewerID": 1}
    assert report["first_bad_lines"] == [{"line": 4, "reason": "bad_encoding"}]
    assert_valid_utf8(frame)


def test_invalid_utf8_in_a_title_is_replaced_and_reported(tmp_path):
    lines = [encoded(meta(i)) for i in range(12)]
    lines[2] = lines[2].replace("Café".encode(), b"Caf\xe9")
    source = write_lines(tmp_path / "meta.json", lines)
    items, report = ingest_metadata(source, LENIENT)
    assert len(items) == 12
    assert items.loc[items["item_id"] == "B000000002", "title"].item() == "Caf\ufffd dress 2"
    assert report["invalid_utf8_replaced"] == {"lines": 1, "first_lines": [3]}
    assert sum(report["skipped"].values()) == 0
    assert_valid_utf8(items)
    assert all(t.encode("utf-8") for t in items["text"])  # what encode_texts needs


def test_invalid_utf8_in_a_title_with_skip_is_a_bad_encoding_line(tmp_path):
    lines = [encoded(meta(i)) for i in range(12)]
    lines[5] = lines[5].replace("Café".encode(), b"Caf\xe9")
    items, report = ingest_metadata(
        write_lines(tmp_path / "meta.json", lines), {**LENIENT, "invalid_utf8": "skip"}
    )
    assert len(items) == 11 and "B000000005" not in set(items["item_id"])
    assert report["skipped"]["bad_encoding"] == 1
    assert report["first_bad_lines"] == [{"line": 6, "reason": "bad_encoding"}]


def test_invalid_utf8_in_a_field_not_read_keeps_the_line(tmp_path):
    lines = [encoded(review(i)) for i in range(12)]
    lines[4] = lines[4].replace(b"nice fabric", b"nice f\xe4bric")
    lines[8] = b'{"broken'  # sends the block through the per-line parser too
    for name in ("a.json", "b.json"):  # Arrow path (file a) and per-line path (file b)
        data = lines if name == "b.json" else lines[:8] + lines[9:]
        frame, report = ingest_reviews(write_lines(tmp_path / name, data), LENIENT, None)
        assert "B000000004" in set(frame["item_id"])
        assert report["skipped"]["bad_encoding"] == 0


def test_invalid_utf8_in_2014_python_literal_metadata_is_replaced(tmp_path):
    line = "{'asin': 'B1', 'title': 'Caf\xe9 chair', 'categories': [['Home', 'Chairs']], 'imUrl': 'http://x/a.jpg'}"
    good = "{'asin': 'B2', 'title': 'Table', 'categories': [['Home', 'Tables']], 'imUrl': 'http://x/b.jpg'}"
    raw = line.encode("latin-1")
    items, report = ingest_metadata(write_lines(tmp_path / "meta.json", [good, raw, good]), LENIENT)
    assert items.set_index("item_id").loc["B1", "title"] == "Caf\ufffd chair"
    assert report["format"] == "2014" and report["invalid_utf8_replaced"]["lines"] == 1


def test_millisecond_timestamps_in_a_2018_file_name_the_field_and_the_fix(tmp_path):
    records = [review(i, unixReviewTime=(1_514_764_800 + i) * 1000) for i in range(40)]
    source = write_lines(tmp_path / "reviews.json", records)
    with pytest.raises(IngestionError) as err:
        ingest_reviews(source, {}, None)
    message = str(err.value)
    assert "unixReviewTime" in message and "milliseconds" in message
    assert "ingestion.timestamp_unit: ms" in message
    frame, report = ingest_reviews(source, {"timestamp_unit": "ms"}, None)
    assert len(frame) == 40 and report["timestamp_unit"] == "ms"
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2018-01-01", tz="UTC")


def test_a_reviews_file_given_as_metadata_is_refused_at_once(tmp_path):
    records = [review(i, image=["https://images.example.com/u.jpg"]) for i in range(20)]
    with pytest.raises(IngestionError, match="looks like a reviews file"):
        ingest_metadata(write_lines(tmp_path / "reviews.json", records), {})


def test_a_bom_before_a_malformed_line_keeps_the_first_line(tmp_path):
    records = [review(i) for i in range(10)]
    records[4] = '{"broken'
    frame, report = ingest_reviews(
        write_lines(tmp_path / "r.json", records, prefix=b"\xef\xbb\xbf"), LENIENT, None
    )
    assert frame["item_id"].iloc[0] == "B000000000"
    assert report["first_bad_lines"] == [{"line": 5, "reason": "malformed"}]


def test_first_bad_lines_are_the_first_by_line_number(tmp_path):
    records: list[Any] = [review(i, reviewText="x" * 200) for i in range(3000)]
    for i in (5, 17, 40):  # rows Arrow parses, flagged after the block's line-parsed pieces
        records[i] = {k: v for k, v in review(i).items() if k != "reviewerID"}
    for i in range(1500, 1520):
        records[i] = '{"broken'
    _, report = ingest_reviews(write_lines(tmp_path / "r.json", records), {**LENIENT, **SMALL_BLOCKS}, None)
    assert [b["line"] for b in report["first_bad_lines"]] == [6, 18, 41, *range(1501, 1508)]
    assert report["skipped"] == {"malformed": 20, "missing_field": 3, "bad_value": 0, "bad_encoding": 0}


# ------------------------------------------------------------------- ingestion: faults already handled
def test_crlf_line_endings(tmp_path):
    frame, report = ingest_reviews(
        write_lines(tmp_path / "r.json", [review(i) for i in range(30)], newline=b"\r\n"), {}, None
    )
    assert len(frame) == 30 and sum(report["skipped"].values()) == 0


def test_bom_alone(tmp_path):
    source = write_lines(tmp_path / "r.json", [review(i) for i in range(30)], prefix=b"\xef\xbb\xbf")
    frame, report = ingest_reviews(source, {}, None)
    assert len(frame) == 30 and sum(report["skipped"].values()) == 0


def test_multi_member_gzip(tmp_path):
    path = tmp_path / "r.json.gz"
    halves = [[review(i) for i in range(0, 20)], [review(i) for i in range(20, 45)]]
    path.write_bytes(b"".join(gzip.compress(b"\n".join(map(encoded, h)) + b"\n") for h in halves))
    frame, _ = ingest_reviews(RawSource(str(path)), {}, None)
    assert frame["item_id"].tolist() == [f"B{i:09d}" for i in range(45)]


def test_nul_bytes_are_skipped_as_malformed(tmp_path):
    lines = [encoded(review(i)) for i in range(50)]
    lines[10] = b"\x00" * 40
    lines[20] = lines[20][:30] + b"\x00" + lines[20][30:]
    frame, report = ingest_reviews(write_lines(tmp_path / "r.json", lines), LENIENT, None)
    assert len(frame) == 48 and report["skipped"]["malformed"] == 2
    assert_valid_utf8(frame)


def test_string_typed_numbers_are_read(tmp_path):
    records = [review(i) for i in range(20)]
    records[3] = review(3, overall="4.0", unixReviewTime="1,480,010,800")
    frame, report = ingest_reviews(write_lines(tmp_path / "r.json", records), {}, None)
    row = frame.set_index("item_id").loc["B000000003"]
    assert row["rating"] == 4.0 and row["timestamp"] == pd.Timestamp(1_480_010_800, unit="s", tz="UTC")
    assert sum(report["skipped"].values()) == 0


def test_a_5_mb_line_is_read(tmp_path):
    records = [review(i) for i in range(10)]
    records[5] = review(5, reviewText="y" * 5_000_000)
    frame, _ = ingest_reviews(write_lines(tmp_path / "r.json.gz", records), SMALL_BLOCKS, None)
    assert len(frame) == 10


def test_truncated_gzip_fails_naming_the_file(tmp_path):
    path = tmp_path / "r.json.gz"
    path.write_bytes(gzip.compress(b"\n".join(encoded(review(i)) for i in range(2000)))[:-200])
    with pytest.raises(IngestionError, match=r"r\.json\.gz: truncated gzip"):
        ingest_reviews(RawSource(str(path)), {}, None)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", gzip.compress(b"")])
def test_empty_files_fail_naming_the_file(tmp_path, content):
    path = tmp_path / "empty.json.gz"
    path.write_bytes(content)
    with pytest.raises(IngestionError, match=r"empty\.json\.gz: the file is empty"):
        ingest_reviews(RawSource(str(path)), {}, None)


def test_truncated_parquet_fails_naming_the_file(tmp_path):
    from kedro.io import DatasetError
    from kedro_datasets.pandas import ParquetDataset

    path = tmp_path / "interactions.parquet"
    dataset = ParquetDataset(filepath=str(path))
    dataset.save(pd.DataFrame({"user_id": ["a"] * 1000, "item_id": [str(i) for i in range(1000)]}))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"interactions\.parquet"):
        dataset.load()


# ---------------------------------------------------------------------------------------- images
def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def test_decompression_bomb_images_are_refused():
    ext, why = verify_image(_png(6000, 6000), max_pixels=1_000_000)  # 36 MP in a ~40 kB file
    assert ext is None and "too many pixels" in why


def test_html_saved_as_jpg_is_corrupt_and_missing(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "A.jpg").write_bytes(b"<html><body>Sorry, we could not find that page</body></html>")
    (local / "B.jpg").write_bytes(_png(20, 20))
    params = _image_params()
    table, _ = acquire_images(
        pd.DataFrame({"item_id": ["A", "B"]}),
        pd.DataFrame({"item_id": ["A", "B"], "image_urls": [[], []]}),
        ImageFolder(str(local)),
        ImageFolder(str(tmp_path / "store"), writable=True),
        params,
    )
    assert table.set_index("item_id")["status"].to_dict() == {"A": "corrupt", "B": "ok"}


def _image_params(**download: Any) -> dict[str, Any]:
    params = yaml.safe_load((REPO / "conf" / "base" / "parameters_features.yml").read_text())["features"]
    params = copy.deepcopy(params["images"])
    params["download"].update(timeout_s=0.5, retries=0, probe_timeout_s=0.5, **download)
    return params


# ------------------------------------------------------------------------ SSRF: private addresses refused
class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits[self.path] += 1  # type: ignore[attr-defined]
        if self.path.startswith("/to-loopback"):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/good.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = _png(8, 8)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def image_server() -> Iterator[tuple[ThreadingHTTPServer, int]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.hits = Counter()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd, httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """``images.example.test`` resolves to 127.0.0.1 (a public-looking name pointing inside)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        return real("127.0.0.1" if host == "images.example.test" else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_loopback_urls_are_refused_by_default(image_server):
    httpd, port = image_server
    result = download_image(f"http://127.0.0.1:{port}/good.png", _image_params()["download"])
    assert result.status == "refused" and "allowed_hosts" in result.detail
    assert httpd.hits["/good.png"] == 0  # refused before connecting


def test_allowed_hosts_let_a_local_server_through(image_server):
    _, port = image_server
    cfg = _image_params(allowed_hosts=["127.0.0.1"])["download"]
    assert download_image(f"http://127.0.0.1:{port}/good.png", cfg).status == "ok"


def test_cloud_metadata_address_is_refused_without_a_connection(monkeypatch):
    def no_connect(*args, **kwargs):
        raise AssertionError("must not connect")

    monkeypatch.setattr(socket, "create_connection", no_connect)
    monkeypatch.setattr(socket.socket, "connect", no_connect)
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/x.jpg",
        "http://0.0.0.0/",
    ):
        assert download_image(url, _image_params()["download"]).status == "refused", url


def test_a_name_resolving_to_loopback_is_refused_and_can_be_allowed(image_server, fake_dns):
    httpd, port = image_server
    url = f"http://images.example.test:{port}/good.png"
    assert download_image(url, _image_params()["download"]).status == "refused"
    assert (
        download_image(url, _image_params(allowed_hosts=["images.example.test"])["download"]).status == "ok"
    )
    assert httpd.hits["/good.png"] == 1


def test_redirects_to_private_addresses_are_refused(image_server, fake_dns):
    httpd, port = image_server
    cfg = _image_params(allowed_hosts=["images.example.test"])["download"]
    result = download_image(f"http://images.example.test:{port}/to-loopback", cfg)
    assert result.status == "refused"
    assert httpd.hits["/to-loopback"] == 1 and httpd.hits["/good.png"] == 0


def test_dns_rebinding_is_caught_at_connect_time(image_server, monkeypatch):
    """The check and the connection use the same resolution: a name that turns private is refused."""
    httpd, port = image_server
    policy = HostPolicy.from_config([])
    answers = iter(["93.184.216.34", "127.0.0.1"])  # public at the check, loopback when connecting
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, p, *a, **k: real(next(answers), p, *a, **k))
    policy.check_url(f"http://rebind.example.test:{port}/good.png")
    with pytest.raises(RefusedAddressError):
        policy.create_connection(("rebind.example.test", port), timeout=1)
    assert httpd.hits["/good.png"] == 0


def test_address_classification():
    import ipaddress

    private = ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1"]
    private += ["0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "64:ff9b::a00:1"]
    assert not any(is_public_address(ipaddress.ip_address(a)) for a in private)
    assert all(is_public_address(ipaddress.ip_address(a)) for a in ["93.184.216.34", "2606:4700::1111"])
    policy = HostPolicy.from_config(["10.0.0.0/8", "Images.Internal."])
    assert policy.names == {"images.internal"} and str(policy.networks[0]) == "10.0.0.0/8"


def test_acquire_images_marks_refused_urls_and_says_how_to_allow(image_server, tmp_path, caplog):
    _, port = image_server
    items = pd.DataFrame({"item_id": ["A"], "image_urls": [[f"http://127.0.0.1:{port}/a.png"]]})
    params = {**_image_params(), "source": "url"}
    with caplog.at_level(logging.WARNING):
        table, _ = acquire_images(
            pd.DataFrame({"item_id": ["A"]}),
            items,
            ImageFolder(str(tmp_path / "none")),
            ImageFolder(str(tmp_path / "store"), writable=True),
            params,
        )
    assert table["status"].tolist() == ["refused"] and not table["has_image"].any()
    assert "features.images.download.allowed_hosts" in caplog.text


# --------------------------------------------------------------------------------- feature cache shards
def _encode(
    modality_cache: FeatureCache, ids: list[str], calls: list[list[str]]
) -> tuple[torch.Tensor, dict]:
    def encode(todo: list[str]):
        calls.append(list(todo))
        for start in range(0, len(todo), 2):  # batches of two: one cache shard each (flush_every 2)
            batch = todo[start : start + 2]
            yield batch, torch.stack([torch.full((4,), float(ord(i[-1]))) for i in batch]), []

    return feature_nodes._encode_with_cache(
        "text",
        ids,
        {i: f"fp-{i}" for i in ids},
        {"encoder": "fake"},
        modality_cache,
        filled("features.cache", {"flush_every": 2}),
        encode,
        lambda: 4,
        torch.float32,
    )


@pytest.mark.parametrize("damage", ["truncate", "garbage_index", "row_mismatch"])
def test_an_unreadable_cache_shard_is_moved_aside_and_its_items_encoded_again(tmp_path, caplog, damage):
    cache = FeatureCache(str(tmp_path / "cache"))
    calls: list[list[str]] = []
    first, _ = _encode(cache, ["a", "b", "c", "d"], calls)
    table = cache.table("text", {"encoder": "fake"})
    shard = sorted(table.directory.glob("shard-*.safetensors"))[0]
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:20])
    else:
        from safetensors.torch import save_file

        index = {"item_ids": ["a"], "fingerprints": ["fp-a"]} if damage == "row_mismatch" else "{nope"
        blob = index if isinstance(index, str) else json.dumps(index)
        save_file({"features": torch.zeros(2, 4)}, str(shard), metadata={"index": blob})
    with caplog.at_level(logging.WARNING):
        second, stats = _encode(cache, ["a", "b", "c", "d"], calls)
    assert str(shard) in caplog.text and "moved aside" in caplog.text
    assert calls[-1] == ["a", "b"] and stats["cache_hits"] == 2  # only the lost shard's items again
    assert torch.equal(first, second)
    assert (shard.parent / (shard.name + ".corrupt")).exists()
    _, stats = _encode(cache, ["a", "b", "c", "d"], calls)  # later runs are clean
    assert stats["cache_hits"] == 4 and len(calls) == 2


# ----------------------------------------------------------------------------------- concurrent runs
def test_lock_fails_at_once_naming_the_other_process(tmp_path, lock_holder):
    folder = tmp_path / "store"
    holder = lock_holder(folder)
    started = time.monotonic()
    with pytest.raises(FolderLockedError, match=rf"pid {holder.pid} on "):
        FolderLock(folder, wait_s=0, what="image store", parameter="features.images.lock_wait_s").acquire()
    assert time.monotonic() - started < 1.0


def test_lock_waits_for_the_other_process(tmp_path, lock_holder):
    folder = tmp_path / "store"
    release_later(lock_holder(folder), 1.0)
    started = time.monotonic()
    with FolderLock(folder, wait_s=60):
        assert time.monotonic() - started > 0.9
    assert not lock_path(folder).exists()  # released and removed


def test_a_stale_lock_of_a_killed_process_is_taken_over(tmp_path, lock_holder, caplog):
    folder = tmp_path / "store"
    holder = lock_holder(folder)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_path(folder).exists()
    with caplog.at_level(logging.WARNING), FolderLock(folder, wait_s=0):
        pass
    assert f"stale lock of pid {holder.pid}" in caplog.text


def test_feature_cache_and_image_store_are_locked(tmp_path, lock_holder):
    cache = FeatureCache(str(tmp_path / "cache"))
    holder = lock_holder(cache.table("text", {"encoder": "fake"}).directory)
    with pytest.raises(FolderLockedError, match=rf"text feature cache .* pid {holder.pid}.*lock_wait_s"):
        _encode(cache, ["a"], [])
    local = tmp_path / "local"
    local.mkdir()
    (local / "A.png").write_bytes(_png(10, 10))
    store = ImageFolder(str(tmp_path / "store"), writable=True)
    holder = lock_holder(store.root)
    with pytest.raises(FolderLockedError, match=rf"image store .* pid {holder.pid}"):
        acquire_images(
            pd.DataFrame({"item_id": ["A"]}),
            pd.DataFrame({"item_id": ["A"], "image_urls": [[]]}),
            ImageFolder(str(local)),
            store,
            _image_params(),
        )


TRAIN = """
    import json, os, signal, sys, time
    import torch
    torch.set_num_threads(1)
    from tests.models.synthetic import make_features, make_sequences, tiny_maf_params
    from maf_pipeline.training import train_model

    params, mode = json.loads(sys.argv[1]), sys.argv[2]
    data, features = make_sequences(seed=3), make_features(30)

    def on_epoch_end(epoch):
        print("epoch", epoch, flush=True)
        if mode == "kill" and epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "slow":
            time.sleep(1.0)

    train_model(data["train_sequences"], data["valid_sequences"], data["item_index"], features["image"],
                features["text"], features["category"], tiny_maf_params(), params, 6, 7, on_epoch_end)
"""


def _train(params: dict, **kw: Any) -> tuple[dict, dict]:
    return train_tiny(make_sequences(seed=3), make_features(30), tiny_maf_params(), params, **kw)


def _training_params(tmp_path: Path, **overrides: Any) -> dict:
    # a checkpoint per epoch (default auto: as often as costs < 5% of the time)
    return small_training(
        tmp_path / "checkpoints", epochs=4, learning_rate=5e-3, checkpoint_every=1, **overrides
    )


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread, as in the training subprocess (results are bitwise equal only at equal threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_sigkill_during_training_resumes_to_the_identical_result(tmp_path, caplog, one_thread):
    params = _training_params(tmp_path)
    proc = run_python(TRAIN, json.dumps(params), "kill")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(list((tmp_path / "checkpoints").rglob("checkpoint.pt"))) == 1
    epochs: list[int] = []
    with caplog.at_level(logging.WARNING):
        resumed, _ = _train(params, on_epoch_end=epochs.append)
    assert epochs == [3, 4] and "stale lock of pid" in caplog.text  # the killed run's lock is taken over
    reference, _ = _train(_training_params(tmp_path / "ref"))
    for key, value in reference.items():
        if key != "__metadata__":
            assert torch.equal(value, resumed[key]), key


def test_two_trainings_on_one_checkpoint_folder(tmp_path, lock_holder, one_thread):
    """Run B fails at once naming run A (another process); with lock_wait_s it waits for A, then trains."""
    params = _training_params(tmp_path)
    artifact, _ = _train(params)
    folder = tmp_path / "checkpoints" / "maf" / artifact["__metadata__"]["checkpoint_key"]
    run_a = lock_holder(folder)
    with pytest.raises(FolderLockedError, match=rf"training checkpoint folder .* pid {run_a.pid} on .*"):
        _train(params)
    epochs: list[int] = []
    release_later(run_a, 1.0)
    started = time.monotonic()
    again, _ = _train({**params, "lock_wait_s": 60}, on_epoch_end=epochs.append)
    assert epochs == [1, 2, 3, 4] and time.monotonic() - started > 0.9
    assert all(torch.equal(v, again[k]) for k, v in artifact.items() if k != "__metadata__")
    assert not list((tmp_path / "checkpoints").rglob("*.tmp"))


def test_checkpoint_temporary_names_are_unique(tmp_path, monkeypatch):
    """A second writer of the same checkpoint in mid-write no longer steals the first one's temporary file."""
    target = tmp_path / "checkpoint.pt"
    real_save = torch.save
    seen: list[str] = []

    def save(obj: Any, path: Any) -> None:
        seen.append(str(path))
        real_save(obj, path)
        if len(seen) == 1:  # another run saves the same checkpoint meanwhile
            training_checkpoints.save_checkpoint({"run": torch.tensor(2)}, target)

    monkeypatch.setattr(training_checkpoints.torch, "save", save)
    training_checkpoints.save_checkpoint({"run": torch.tensor(1)}, target)
    assert len(set(seen)) == 2 and all(re.search(rf"\.{os.getpid()}-[0-9a-f]{{8}}\.tmp$", s) for s in seen)
    assert torch.load(target, weights_only=True)["run"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


CONCURRENT_WRITES = """
    import sys
    from pathlib import Path
    from maf_pipeline.locks import atomic_write
    payload = sys.argv[2].encode() * 100_000
    for _ in range(100):
        atomic_write(sys.argv[1], lambda tmp: Path(tmp).write_bytes(payload))
"""


def test_concurrent_writers_of_one_artifact(tmp_path):
    """Two processes replacing the same artifact: no crash, no torn file, no temporary file left."""
    target = tmp_path / "model.safetensors"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    code = textwrap.dedent(CONCURRENT_WRITES)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target), v], env=env) for v in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert target.read_bytes() in (b"a" * 100_000, b"b" * 100_000)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


CONCURRENT_CATALOG_WRITES = """
    import sys
    import pandas as pd
    from maf_pipeline.datasets.atomic import JSONDataset, ParquetDataset
    n = int(sys.argv[3])
    frame = pd.DataFrame({"writer": [sys.argv[2]] * 50_000, "x": range(50_000)})
    for _ in range(n):
        ParquetDataset(filepath=sys.argv[1]).save(frame)
        JSONDataset(filepath=sys.argv[1] + ".json").save({"writer": sys.argv[2], "x": list(range(20_000))})
"""


def test_concurrent_writers_and_a_reader_of_catalog_datasets(tmp_path):
    """Three processes saving the same Parquet and JSON artifacts through the catalog's dataset types while
    this one reads them: every read is a whole file of one writer, and no temporary file is left."""
    import json

    target = tmp_path / "interactions.parquet"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    code = textwrap.dedent(CONCURRENT_CATALOG_WRITES)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target), w, "15"], env=env) for w in "abc"]
    reads = 0
    while any(p.poll() is None for p in procs):
        document = Path(str(target) + ".json")
        if target.exists() and document.exists():  # each is written first once the first writer got there
            frame = pd.read_parquet(target)  # a torn file: "magic bytes not found" / "file size is 0 bytes"
            assert len(frame) == 50_000 and frame["writer"].nunique() == 1
            assert json.loads(document.read_text())["x"][-1] == 19_999
            reads += 1
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0] and reads > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interactions.parquet", "interactions.parquet.json"]


# ----------------------------------------------------------------------------------------- file modes
def test_artifacts_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        SafetensorsDataset(str(tmp_path / "model.safetensors")).save({"w": torch.zeros(3)})
        CacheTable(tmp_path / "cache").append(["a"], ["fp"], torch.zeros(1, 3))
        ImageFolder(str(tmp_path / "images"), writable=True).put("A", _png(4, 4), "png")
        training_checkpoints.save_checkpoint({"w": torch.zeros(3)}, tmp_path / "ckpt" / "checkpoint.pt")
        atomic_write(tmp_path / "plain.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
        pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "table.parquet")
    finally:
        os.umask(previous)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 6
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o644" for p in files}


def test_a_linked_local_image_keeps_its_own_mode(tmp_path):
    """The store hard-links local images: fixing the store file's mode must not chmod the user's file."""
    local = tmp_path / "local"
    local.mkdir()
    source = local / "A.png"
    source.write_bytes(_png(10, 10))
    source.chmod(0o600)
    store = ImageFolder(str(tmp_path / "store"), writable=True)
    store.put_file("A", source, "png")
    assert stat.S_IMODE(source.stat().st_mode) == 0o600
    assert store.read("A") == source.read_bytes()


# ------------------------------------------------------------------------------ project-wide guarantees
def test_no_pickle_anywhere():
    catalog = (REPO / "conf" / "base" / "catalog.yml").read_text()
    assert "pickle" not in catalog.lower()
    for path in (REPO / "src").rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)


def test_uis_listen_on_loopback_only():
    makefile = (REPO / "Makefile").read_text()
    assert "--host 127.0.0.1" in makefile and "0.0.0.0" not in makefile
    mlflow = yaml.safe_load((REPO / "conf" / "base" / "mlflow.yml").read_text())
    assert mlflow["ui"]["host"] == "127.0.0.1"


# ----------------------------------------------------------------------------- property-based ingestion
# valid_decomposed_id: a user id spelled with a combining accent (NFD) arrives byte-exact: ids are keys into
# the user's own systems, so they are never Unicode-normalised (labels and texts are)
CORRUPTIONS = (
    "valid",
    "valid_bad_bytes_unread",
    "valid_decomposed_id",
    "bad_json",
    "bad_utf8_id",
    "wrong_type",
    "missing_field",
)
EXPECTED_REASON = {
    "bad_json": "malformed",
    "bad_utf8_id": "bad_encoding",
    "wrong_type": "bad_value",
    "missing_field": "missing_field",
}


def _user(i: int, kind: str) -> str:
    return f"U{i:05d}" + ("Re\u0301" if kind == "valid_decomposed_id" else "")


def _line(i: int, kind: str, variant: int) -> bytes:
    record = review(i, user=f"U{i:05d}")
    if kind == "valid_bad_bytes_unread":
        return encoded(record).replace(b"nice fabric", b"nice f\xe4\xff bric")
    if kind == "valid_decomposed_id":
        record["reviewerID"] = _user(i, kind)
    if kind == "bad_json":
        text = encoded(record)
        return [text[: len(text) // 2], b"[1, 2, 3]", b"not json at all", b"{'a': 1"][variant % 4]
    if kind == "bad_utf8_id":
        return encoded(record).replace(f'"U{i:05d}"'.encode(), f'"U{i:05d}'.encode() + b'\xc3\x28"')
    if kind == "wrong_type":
        field, value = [
            ("overall", "five"),
            ("overall", [1, 2]),
            ("unixReviewTime", "yesterday"),
            ("reviewerID", {"id": 1}),
            ("unixReviewTime", 1.5),
        ][variant % 5]
        record[field] = value
    if kind == "missing_field":
        field = ["reviewerID", "asin", "overall", "unixReviewTime"][variant % 4]
        if variant % 2:
            del record[field]
        else:
            record[field] = "" if field in ("reviewerID", "asin") else None
    return encoded(record)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.tuples(st.sampled_from(CORRUPTIONS), st.integers(0, 19)), min_size=1, max_size=400),
    gzipped=st.booleans(),
    padding=st.integers(0, 400),
)
def test_exactly_the_valid_lines_arrive_and_the_skips_add_up(kinds, gzipped, padding):
    kinds = [("valid", 0), *kinds]  # format detection needs one record among the first lines
    lines = []
    for i, (kind, variant) in enumerate(kinds):
        line = _line(i, kind, variant)
        lines.append(line.replace(b'"summary": "Nice"', b'"summary": "' + b"N" * padding + b'"'))
    with tempfile.TemporaryDirectory() as folder:
        source = write_lines(Path(folder) / ("r.json.gz" if gzipped else "r.json"), lines)
        frame, report = ingest_reviews(source, {**LENIENT, **SMALL_BLOCKS}, None)
    valid = [i for i, (kind, _) in enumerate(kinds) if kind.startswith("valid")]
    assert frame["item_id"].tolist() == [f"B{i:09d}" for i in valid]
    assert frame["user_id"].tolist() == [_user(i, kinds[i][0]) for i in valid]
    assert_valid_utf8(frame)
    expected = Counter(EXPECTED_REASON[k] for k, _ in kinds if k in EXPECTED_REASON)
    assert report["skipped"] == {r: expected.get(r, 0) for r in report["skipped"]}
    assert report["lines_read"] == len(kinds) == report["kept"] + sum(report["skipped"].values())
    bad = [i + 1 for i, (kind, _) in enumerate(kinds) if kind in EXPECTED_REASON]
    assert [b["line"] for b in report["first_bad_lines"]] == bad[:10]
