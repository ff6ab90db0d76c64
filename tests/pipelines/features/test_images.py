"""Image acquisition: URL rewriting, verification, downloads from a local HTTP server (no real network)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from maf_pipeline.pipelines.features import images
from maf_pipeline.pipelines.features.images import (
    ImageSourceUnreachableError,
    acquire_images,
    download_image,
    full_size_url,
    list_image_candidates,
    verify_image,
)
from maf_pipeline.pipelines.features.stores import ImageFolder

from .conftest import closed_port, jpeg_bytes

GOOD = jpeg_bytes(1)
CORRUPT = GOOD[: len(GOOD) // 2]  # a truncated JPEG: the header is fine, the data is not


class _Handler(BaseHTTPRequestHandler):
    """Routes of the fake image host; ``server.hits`` counts requests per path."""

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, body: bytes = b"", length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        hits = self.server.hits  # type: ignore[attr-defined]
        hits[self.path] += 1
        path = self.path
        if path.startswith("/good") or path == "/images/I/51abc.jpg":
            self._send(200, GOOD)
        elif path == "/corrupt.jpg":
            self._send(200, CORRUPT)
        elif path == "/not-an-image.jpg":
            self._send(200, b"<html>sorry</html>")
        elif path == "/big-declared.jpg":
            self._send(200, GOOD, length=50_000_000)  # Content-Length says too much: refused before reading
        elif path == "/big-streamed.jpg":
            self.send_response(200)  # no Content-Length: the cap must trip while reading
            self.end_headers()
            self.wfile.write(b"\xff" * 300_000)
            self.close_connection = True
        elif path == "/slow.jpg":
            time.sleep(1.0)
            self._send(200, GOOD)
        elif path == "/flaky.jpg":
            self._send(500) if hits[path] <= 2 else self._send(200, GOOD)
        elif path == "/ftp-redirect.jpg":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/x.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Clients that hang up early (timeouts, size caps) are expected here, not errors."""


@pytest.fixture(scope="module")
def _running_server():
    """A threaded HTTP server on 127.0.0.1 (random port) serving the routes above, one per test module."""
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    httpd.hits = Counter()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server(_running_server):
    """The local server with its request counts reset."""
    _running_server[0].hits.clear()
    return _running_server


@pytest.fixture
def dl(params) -> dict:
    """Download settings made fast: short timeouts, tiny backoff, 100 kB cap."""
    d = dict(params["images"]["download"])
    d.update(timeout_s=0.3, deadline_s=5, retries=3, backoff_s=0.01, backoff_max_s=0.02, max_bytes=100_000)
    d["allowed_hosts"] = ["127.0.0.1"]  # the local test server (loopback is refused by default)
    return d


# ----------------------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://images-na.ssl-images-amazon.com/images/I/51abc._SX38_SY50_CR,0,0,38,50_.jpg",
            "https://images-na.ssl-images-amazon.com/images/I/51abc.jpg",
        ),
        (
            "https://m.media-amazon.com/images/I/71xyz._AC_US40_.jpg",
            "https://m.media-amazon.com/images/I/71xyz.jpg",
        ),
        ("https://m.media-amazon.com/images/I/71xyz.jpg", "https://m.media-amazon.com/images/I/71xyz.jpg"),
        (  # a variant seen in the real 2018 metadata: no closing underscore
            "https://images-na.ssl-images-amazon.com/images/I/41HSPSRZwZL._SX35_SY46.jpg",
            "https://images-na.ssl-images-amazon.com/images/I/41HSPSRZwZL.jpg",
        ),
        (
            "https://images-na.ssl-images-amazon.com/images/I/41HS._SX35_SY46._CR0,0,35,46_BG85,85,85_PKdp-play__.jpg",
            "https://images-na.ssl-images-amazon.com/images/I/41HS.jpg",
        ),
        ("https://example.com/a._b_/c.png", "https://example.com/a._b_/c.png"),  # only the file name's suffix
    ],
)
def test_full_size_url(url, expected):
    assert full_size_url(url) == expected


def test_verify_image_accepts_images_and_rejects_garbage():
    assert verify_image(GOOD) == ("jpg", "")
    for bad in (CORRUPT, b"", b"GIF89a-not-really"):
        ext, why = verify_image(bad)
        assert ext is None and why


def test_verify_image_rejects_pixel_bombs():
    ext, why = verify_image(jpeg_bytes(2, size=(100, 100)), max_pixels=50 * 50)
    assert ext is None and "pixels" in why


# ------------------------------------------------------------------------------------------ downloads
def test_download_good(server, dl):
    _, base = server
    result = download_image(f"{base}/good.jpg", dl)
    assert (result.status, result.ext, result.data) == ("ok", "jpg", GOOD)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/corrupt.jpg", "corrupt"),
        ("/not-an-image.jpg", "corrupt"),
        ("/big-declared.jpg", "too_large"),
        ("/big-streamed.jpg", "too_large"),
        ("/missing.jpg", "http_error"),
        ("/ftp-redirect.jpg", "http_error"),
    ],
)
def test_download_failures_are_statuses_not_exceptions(server, dl, path, status):
    _, base = server
    assert download_image(base + path, dl).status == status


def test_client_errors_are_not_retried(server, dl):
    httpd, base = server
    download_image(f"{base}/missing.jpg", dl)
    assert httpd.hits["/missing.jpg"] == 1


def test_server_errors_are_retried_with_exponential_backoff(server, dl):
    httpd, base = server
    delays: list[float] = []
    result = download_image(f"{base}/flaky.jpg", dl, sleep=delays.append)
    assert result.status == "ok"
    assert httpd.hits["/flaky.jpg"] == 3  # 500, 500, then the image
    assert len(delays) == 2 and delays[1] > delays[0] * 1.0  # jittered, but the second wait is the longer one


def test_retries_give_up(server, dl):
    httpd, base = server
    dl["retries"] = 1
    result = download_image(f"{base}/flaky.jpg", dl, sleep=lambda s: None)
    assert (result.status, result.detail) == ("http_error", "HTTP 500")
    assert httpd.hits["/flaky.jpg"] == 2


def test_slow_server_times_out(server, dl):
    httpd, base = server
    dl["retries"] = 1
    start = time.monotonic()
    result = download_image(f"{base}/slow.jpg", dl, sleep=lambda s: None)
    assert result.status == "timeout"
    assert httpd.hits["/slow.jpg"] == 2
    assert time.monotonic() - start < 1.8  # two attempts of ~0.3 s, not two full 1 s responses


def test_only_http_and_https(dl):
    for url in ("file:///etc/passwd", "ftp://example.com/a.jpg", "data:image/png;base64,AAAA"):
        assert download_image(url, dl).status == "invalid_url"


# ------------------------------------------------------------------------------------- acquire_images
def _frames(urls: dict[str, list[str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = list(urls)
    interactions = pd.DataFrame({"user_id": ["u"] * len(ids), "item_id": ids})
    items = pd.DataFrame({"item_id": ids, "image_urls": list(urls.values())})
    return interactions, items


def _url_params(params, dl) -> dict:
    return {**params["images"], "source": "url", "download": dl}


def test_acquire_from_urls_stores_verified_images_and_resumes(server, dl, params, tmp_path):
    httpd, base = server
    urls = {
        "A": [f"{base}/images/I/51abc._SX38_SY50_CR,0,0,38,50_.jpg"],  # thumbnail -> full size
        "B": [f"{base}/missing.jpg", f"{base}/good-b.jpg"],  # first URL fails, second works
        "C": [f"{base}/corrupt.jpg"],
        "D": [],
        "E": [f"{base}/big-declared.jpg"],
    }
    interactions, items = _frames(urls)
    items.loc[items["item_id"] == "D", "image_urls"] = float("nan")  # how a missing list can come back
    store = ImageFolder(str(tmp_path / "store"), writable=True)
    local = ImageFolder(str(tmp_path / "nowhere"))
    table, report = acquire_images(interactions, items, local, store, _url_params(params, dl))

    assert list(table.columns) == images.AVAILABILITY_COLUMNS
    assert (report["items"], report["attempted"], report["fetched"], report["already_stored"]) == (5, 5, 2, 0)
    assert report["failed"] == {"corrupt": 1, "no_url": 1, "too_large": 1}
    assert report["bytes"] == int(table["num_bytes"].fillna(0).sum()) > 0 and report["transfer_s"] > 0
    status = dict(zip(table["item_id"], table["status"], strict=True))
    assert status == {"A": "ok", "B": "ok", "C": "corrupt", "D": "no_url", "E": "too_large"}
    assert table.set_index("item_id")["has_image"].to_dict() == {
        "A": True,
        "B": True,
        "C": False,
        "D": False,
        "E": False,
    }
    assert store.ids() == {"A", "B"}
    assert store.read("A") == GOOD
    assert httpd.hits["/images/I/51abc.jpg"] == 1 and not any("_SX38" in p for p in httpd.hits)

    before = sum(httpd.hits.values())
    again, report = acquire_images(interactions, items, local, store, _url_params(params, dl))
    assert (report["already_stored"], report["attempted"], report["fetched"]) == (2, 3, 0)
    assert dict(zip(again["item_id"], again["has_image"], strict=True)) == {
        "A": True, "B": True, "C": False, "D": False, "E": False,
    }  # fmt: skip
    assert set(again.loc[again["status"] == "stored", "item_id"]) == {"A", "B"}
    assert sum(httpd.hits.values()) - before == 2  # only the missing C and E are tried again


def test_interrupted_download_resumes_with_what_is_missing(server, dl, params, tmp_path, monkeypatch):
    httpd, base = server
    urls = {f"I{i}": [f"{base}/good-{i}.jpg"] for i in range(6)}
    interactions, items = _frames(urls)
    store = ImageFolder(str(tmp_path / "store"), writable=True)
    dl["workers"] = 1
    real = images.download_image
    calls = Counter()

    def dies_on_the_fourth(url, cfg, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # what Ctrl-C (or a killed worker) does mid-run
        return real(url, cfg, **kw)

    monkeypatch.setattr(images, "download_image", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        acquire_images(interactions, items, ImageFolder(str(tmp_path / "x")), store, _url_params(params, dl))
    kept = store.ids()
    assert len(kept) == 3  # what finished before the interruption is on disk
    assert not list(Path(store.path).glob(".*.tmp"))  # and no half-written file

    monkeypatch.setattr(images, "download_image", real)
    before = Counter(httpd.hits)
    table, _ = acquire_images(
        interactions, items, ImageFolder(str(tmp_path / "x")), store, _url_params(params, dl)
    )
    assert table["has_image"].all()
    fetched = {p for p in httpd.hits if httpd.hits[p] > before[p]}
    assert fetched == {f"/good-{i[1:]}.jpg" for i in set(urls) - kept}


def test_offline_fails_fast_with_a_clear_message(dl, params, tmp_path):
    interactions, items = _frames({"A": [f"http://127.0.0.1:{closed_port()}/a.jpg"]})
    store = ImageFolder(str(tmp_path / "store"), writable=True)
    start = time.monotonic()
    with pytest.raises(ImageSourceUnreachableError, match=r"offline.*mark_missing"):
        acquire_images(interactions, items, ImageFolder(str(tmp_path / "x")), store, _url_params(params, dl))
    assert time.monotonic() - start < 5


def test_offline_mark_missing(dl, params, tmp_path):
    port = closed_port()
    interactions, items = _frames({"A": [f"http://127.0.0.1:{port}/a.jpg"], "B": []})
    dl["on_unreachable"] = "mark_missing"
    store = ImageFolder(str(tmp_path / "store"), writable=True)
    table, _ = acquire_images(
        interactions, items, ImageFolder(str(tmp_path / "x")), store, _url_params(params, dl)
    )
    assert dict(zip(table["item_id"], table["status"], strict=True)) == {"A": "unreachable", "B": "no_url"}
    assert not table["has_image"].any()


# --------------------------------------------------------------------------------------- local source
def test_acquire_from_local_folder(params, tmp_path):
    local = tmp_path / "images"
    local.mkdir()
    (local / "A.jpg").write_bytes(GOOD)
    (local / "B.png").write_bytes(CORRUPT)
    (local / "C.jpg").write_bytes(jpeg_bytes(3))
    interactions, items = _frames({"A": [], "B": [], "C": [], "D": []})
    store = ImageFolder(str(tmp_path / "store"), writable=True)
    table, _ = acquire_images(interactions, items, ImageFolder(str(local)), store, params["images"])
    status = dict(zip(table["item_id"], table["status"], strict=True))
    assert status == {"A": "ok", "B": "corrupt", "C": "ok", "D": "no_file"}
    assert store.ids() == {"A", "C"} and store.read("A") == GOOD
    assert table["has_image"].dtype == "bool" and pd.api.types.is_string_dtype(table["item_id"])
    fewer = interactions[interactions["item_id"] != "C"]
    again, _ = acquire_images(fewer, items, ImageFolder(str(local)), store, params["images"])
    assert dict(zip(again["item_id"], again["status"], strict=True)) == {
        "A": "stored",
        "B": "corrupt",
        "D": "no_file",
    }


def test_local_source_without_folder_is_a_clear_error(params, tmp_path):
    interactions, items = _frames({"A": []})
    store = ImageFolder(str(tmp_path / "store"), writable=True)
    with pytest.raises(FileNotFoundError, match="local_images"):
        acquire_images(interactions, items, ImageFolder(str(tmp_path / "absent")), store, params["images"])
    with pytest.raises(FileNotFoundError, match="local_images"):
        list_image_candidates(
            interactions, items, ImageFolder(str(tmp_path / "absent")), store, params["images"]
        )


# ---------------------------------------------------------------------------------- image candidates
def test_candidates_are_decided_without_fetching(server, dl, params, tmp_path):
    httpd, base = server
    urls = {"A": [f"{base}/good-a.jpg"], "B": [" ", ""], "C": [f"{base}/corrupt.jpg"], "D": [], "S": []}
    interactions, items = _frames(urls)
    items.loc[items["item_id"] == "D", "image_urls"] = float("nan")
    store = ImageFolder(str(tmp_path / "store"), writable=True)
    store.put("S", GOOD, "jpg")  # already stored: a candidate even without a URL
    before = sum(httpd.hits.values())
    table = list_image_candidates(
        interactions, items, ImageFolder(str(tmp_path / "x")), store, _url_params(params, dl)
    )
    assert sum(httpd.hits.values()) == before  # nothing fetched
    assert dict(zip(table["item_id"], table["status"], strict=True)) == {
        "A": "url", "B": "no_url", "C": "url", "D": "no_url", "S": "stored",
    }  # fmt: skip
    assert table.set_index("item_id")["has_image"].to_dict() == {
        "A": True, "B": False, "C": True, "D": False, "S": True,
    }  # fmt: skip
    # every item acquire_images verifies is a candidate (the fixed point's precondition)
    verified, _ = acquire_images(
        interactions, items, ImageFolder(str(tmp_path / "x")), store, _url_params(params, dl)
    )
    ok = set(verified.loc[verified["has_image"], "item_id"])
    assert ok <= set(table.loc[table["has_image"], "item_id"])

    local = tmp_path / "images"
    local.mkdir()
    (local / "B.jpg").write_bytes(GOOD)
    (local / "C.png").write_bytes(CORRUPT)  # a file is a candidate; verification comes later
    table = list_image_candidates(interactions, items, ImageFolder(str(local)), store, params["images"])
    assert dict(zip(table["item_id"], table["status"], strict=True)) == {
        "A": "stored", "B": "local_file", "C": "local_file", "D": "no_file", "S": "stored",
    }  # fmt: skip


def test_image_folder_round_trip_and_odd_ids(tmp_path):
    store = ImageFolder(str(tmp_path / "s"), writable=True)
    store.put("a/b c", GOOD, "jpg")
    store.put("a/b c", b"png-bytes", "png")  # a new format replaces the old file
    assert store.ids() == {"a/b c"}
    assert store.read("a/b c") == b"png-bytes"
    assert [p.name for p in Path(store.path).iterdir()] == ["a%2Fb%20c.png"]
    with pytest.raises(PermissionError):
        ImageFolder(str(tmp_path / "s")).put("x", GOOD, "jpg")
