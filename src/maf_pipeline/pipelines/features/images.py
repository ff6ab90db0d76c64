"""Image acquisition: copy item images from a local folder or download them, verified, into the image store.

Two steps, so that only items that can survive the filters are fetched:

1. ``list_image_candidates`` decides cheaply, fetching nothing, which de-duplicated items *can* have an image
   (already stored, a local file, or at least one URL); the completeness filter and the k-core use it.
2. ``acquire_images`` fetches and verifies images for the k-core survivors only; the preprocessing node
   ``filter_verified_images`` then drops the items whose image failed and re-applies the k-core.

Every stored image has decoded with PIL; corrupt, oversized or unreachable ones are counted and marked
missing, never fatal. Images are written one by one as they arrive, so a re-run fetches only what is missing
and an interrupted run resumes.
"""

from __future__ import annotations

import io
import logging
import random
import re
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from maf_pipeline.datasets.embeddings import ItemEmbeddings
from maf_pipeline.locks import FolderLock
from maf_pipeline.progress import progress

from .safe_http import HostPolicy, RefusedAddressError, opener
from .stores import ImageFolder

logger = logging.getLogger(__name__)

# Amazon image URLs carry size/crop directives between the image id and the extension, after a "._"
# (``51abc._SX38_SY50_CR,0,0,38,50_.jpg``, ``41HS._SX35_SY46.jpg``); dropping them gives the full image.
_AMAZON_SIZE_SUFFIX = re.compile(r"(/[^/.]+)\._[^/]*(\.[A-Za-z0-9]+)$")
_FORMAT_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp"}
_RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}
AVAILABILITY_COLUMNS = ["item_id", "has_image", "status", "source", "url", "num_bytes", "detail"]
CANDIDATE_COLUMNS = ["item_id", "has_image", "status"]


class ImageSourceUnreachableError(RuntimeError):
    """Raised when image hosts cannot be reached and ``on_unreachable`` is ``fail``."""


@dataclass(frozen=True)
class FetchResult:
    """Outcome for one item: a status (``ok`` or why not), the verified bytes and their extension."""

    status: str
    data: bytes | None = None
    ext: str | None = None
    url: str | None = None
    detail: str = ""
    num_bytes: int | None = None


def full_size_url(url: str) -> str:
    """Turn an Amazon thumbnail URL into the full-size image URL by dropping the ``._..._`` size suffix."""
    return _AMAZON_SIZE_SUFFIX.sub(r"\1\2", url.strip())


def verify_image(data: bytes, max_pixels: int = 89_478_485) -> tuple[str | None, str]:
    """Check that bytes decode as an image; returns ``(extension, "")`` or ``(None, reason)``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()  # structure and checksums
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
            if img.width * img.height > max_pixels:
                return None, f"too many pixels ({img.width}x{img.height})"
            img.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads every byte
            img.load()
    except Exception as exc:  # PIL raises many types for bad data; all mean "not an image"
        return None, f"{type(exc).__name__}: {exc}"[:200]
    return _FORMAT_EXT.get(fmt, fmt.lower() or "img"), ""


def download_image(url: str, cfg: dict[str, Any], sleep: Callable[[float], None] = time.sleep) -> FetchResult:
    """Fetch one URL with timeouts, a size cap and retries with exponential backoff; verify it decodes."""
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        return FetchResult("invalid_url", url=url, detail="only http/https URLs are fetched")
    max_bytes = int(cfg["max_bytes"])
    retries = int(cfg["retries"])
    policy = HostPolicy.from_config(cfg["allowed_hosts"])
    request = urllib.request.Request(url, headers={"User-Agent": cfg["user_agent"]})
    last = FetchResult("http_error", url=url)
    for attempt in range(retries + 1):
        if attempt:
            delay = min(float(cfg["backoff_s"]) * 2 ** (attempt - 1), float(cfg["backoff_max_s"]))
            sleep(delay * (0.5 + random.random() / 2))  # jitter spreads retries of parallel workers
        try:
            deadline = time.monotonic() + float(cfg["deadline_s"])
            policy.check_url(url)
            with opener(policy).open(request, timeout=float(cfg["timeout_s"])) as response:
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    return FetchResult(
                        "too_large", url=url, detail=f"Content-Length {declared} > {max_bytes}"
                    )
                chunks, size = [], 0
                while chunk := response.read(65536):
                    size += len(chunk)
                    if size > max_bytes:
                        return FetchResult("too_large", url=url, detail=f"more than {max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"download exceeded {cfg['deadline_s']} s")
                    chunks.append(chunk)
            data = b"".join(chunks)
        except RefusedAddressError as exc:
            return FetchResult("refused", url=url, detail=str(exc)[:300])
        except urllib.error.HTTPError as exc:
            last = FetchResult("http_error", url=url, detail=f"HTTP {exc.code}")
            if exc.code not in _RETRY_HTTP:
                return last
            continue
        except TimeoutError as exc:
            last = FetchResult("timeout", url=url, detail=str(exc)[:200])
            continue
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, RefusedAddressError):
                return FetchResult("refused", url=url, detail=str(reason)[:300])
            last = FetchResult("unreachable", url=url, detail=f"{type(reason).__name__}: {reason}"[:200])
            continue
        ext, why = verify_image(data, int(cfg["max_pixels"]))
        if ext is None:
            return FetchResult("corrupt", url=url, detail=why)
        return FetchResult("ok", data=data, ext=ext, url=url, num_bytes=len(data))
    return last


def unreachable_hosts(
    urls: Sequence[str], timeout_s: float, policy: HostPolicy | None = None
) -> dict[str, str]:
    """Probe each distinct host once (DNS + TCP connect with a short timeout); returns ``host -> error``.

    With a ``policy``, hosts it refuses are not probed (their downloads are refused, not unreachable).
    """
    failed = {}
    hosts = {}
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.hostname:
            hosts.setdefault(
                parts.netloc, (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
            )
    for netloc, (host, port) in hosts.items():
        try:
            if policy is None:
                socket.create_connection((host, port), timeout=timeout_s).close()
            else:
                policy.create_connection((host, port), timeout=timeout_s).close()
        except RefusedAddressError:
            continue
        except OSError as exc:
            failed[netloc] = f"{type(exc).__name__}: {exc}"
    return failed


def _candidate_urls(urls: Any, cfg: dict[str, Any]) -> list[str]:
    if urls is None or isinstance(urls, str | bytes | float):  # a missing list can arrive as NaN
        urls = [urls] if isinstance(urls, str) else []
    out: list[str] = []
    for url in list(urls)[: int(cfg["max_urls_per_item"])]:
        if not isinstance(url, str) or not url.strip():
            continue
        url = full_size_url(url) if cfg["full_size"] else url.strip()
        if url not in out:
            out.append(url)
    return out


def _fetch_urls(urls: list[str], cfg: dict[str, Any]) -> FetchResult:
    """Try an item's URLs in order; the first verified image wins, else the first URL's failure counts."""
    if not urls:
        return FetchResult("no_url")
    first: FetchResult | None = None
    for url in urls:
        result = download_image(url, cfg)
        if result.status == "ok":
            return result
        first = first or result
    return first  # type: ignore[return-value]


def _copy_local(local: ImageFolder, item_id: str, max_bytes: int, max_pixels: int) -> FetchResult:
    path = local.find(item_id)
    if path is None:
        return FetchResult("no_file")
    size = path.stat().st_size
    if size > max_bytes:
        return FetchResult("too_large", url=str(path), detail=f"{size} bytes > {max_bytes}")
    ext, why = verify_image(path.read_bytes(), max_pixels)
    if ext is None:
        return FetchResult("corrupt", url=str(path), detail=why)
    return FetchResult("ok", ext=ext, url=str(path), num_bytes=size)


IMAGE_SOURCES = ("local", "url", "file", "none")


def _check_source(params: dict[str, Any], embeddings: ItemEmbeddings | None = None) -> str:
    source = params["source"]
    if source not in IMAGE_SOURCES:
        raise ValueError(f"features.images.source must be one of {IMAGE_SOURCES}, not {source!r}")
    if source == "file" and embeddings is None:
        raise ValueError(
            "features.images.source is 'file' but the catalog's image_embeddings has no filepath: point it "
            "at the precomputed image vectors (maf_pipeline.datasets.EmbeddingFileDataset)"
        )
    return source


def _vector_status(item_ids: Sequence[str], embeddings: ItemEmbeddings | None) -> np.ndarray:
    """``vector`` for items with a precomputed image vector, ``no_vector`` for the others (``none`` for every
    item when there is no image source)."""
    if embeddings is None:
        return np.full(len(item_ids), "none", dtype=object)
    have = set(embeddings.ids)
    return np.array(["vector" if i in have else "no_vector" for i in item_ids], dtype=object)


def _ids_with_url(items: pd.DataFrame, cfg: dict[str, Any]) -> set[str]:
    """Ids of items with a non-blank URL among their first ``max_urls_per_item`` (vectorised over Arrow)."""
    try:
        urls = pa.array(items["image_urls"], pa.list_(pa.string()), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):  # odd cells: the per-item rule
        return {
            i
            for i, u in zip(items["item_id"].astype(str), items["image_urls"], strict=True)
            if _candidate_urls(u, cfg)
        }
    urls = pc.list_slice(urls, 0, int(cfg["max_urls_per_item"]))
    flat = pc.list_flatten(urls)
    blank = pc.fill_null(pc.or_kleene(pc.equal(pc.utf8_length(flat), 0), pc.utf8_is_space(flat)), True)
    parents = pc.list_parent_indices(urls).to_numpy()
    has = np.bincount(parents[~blank.to_numpy(zero_copy_only=False)], minlength=len(urls)) > 0
    return set(items["item_id"].astype(str).to_numpy()[has])


def _member(values: pd.Index, wanted: set[str]) -> np.ndarray:
    return np.fromiter((v in wanted for v in values), dtype=bool, count=len(values))


def _require_folder(local_images: ImageFolder) -> None:
    if not local_images.exists():
        raise FileNotFoundError(
            f"features.images.source is 'local' but the image folder {local_images.path} does not exist; "
            "point the 'local_images' catalog entry at a folder of <item_id>.jpg files, or use source: url."
        )


def list_image_candidates(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    local_images: ImageFolder,
    image_store: ImageFolder,
    params: dict[str, Any],
    image_embeddings: ItemEmbeddings | None = None,
) -> pd.DataFrame:
    """Which interacted items can have an image, decided without fetching or decoding anything.

    An item is a candidate when it is already in the image store, or has a file in the local folder
    (``source: local``), or at least one usable URL (``source: url``). Every item with a verified image is a
    candidate, so filtering on candidates first and on verified images after the k-core gives the same data
    as filtering on verified images up front (the k-core is monotone). With ``source: file`` the image
    modality is the precomputed ``image_embeddings``: an item is a candidate when it has a vector. Returns
    ``image_candidates`` (item_id, has_image, status: stored | local_file | url | vector | no_file | no_url |
    no_vector | none). ``source: none``: the data has no images (no item has one; nothing is read).
    """
    source = _check_source(params, image_embeddings)
    item_ids = pd.Index(interactions["item_id"].astype(str).unique()).sort_values()
    stored = (
        _member(item_ids, image_store.ids()) if source in ("local", "url") else np.zeros(len(item_ids), bool)
    )
    if source == "none":
        status = np.full(len(item_ids), "none", dtype=object)
    elif source == "file":
        status = _vector_status(item_ids, image_embeddings)
    elif source == "local":
        if not stored.all():
            _require_folder(local_images)
        status = np.where(_member(item_ids, local_images.ids()), "local_file", "no_file")
    else:
        status = np.where(_member(item_ids, _ids_with_url(items, params["download"])), "url", "no_url")
    status = np.where(stored, "stored", status)
    table = pd.DataFrame(
        {
            "item_id": item_ids.astype(str),
            "has_image": ~np.isin(status, ["no_file", "no_url", "no_vector", "none"]),
            "status": status,
        }
    )
    logger.info(
        "Image candidates (%s source, nothing fetched): %d of %d items; %s",
        *(source, int(table["has_image"].sum()), len(table), dict(sorted(Counter(status.tolist()).items()))),
    )
    return table[CANDIDATE_COLUMNS]


def _vector_availability(
    interactions: pd.DataFrame, embeddings: ItemEmbeddings | None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``image_availability`` when the image modality is a file of precomputed vectors, or absent
    (``embeddings`` None: source ``none``); nothing is fetched."""
    item_ids = sorted(interactions["item_id"].astype(str).unique())
    status = _vector_status(item_ids, embeddings)
    table = pd.DataFrame(
        {
            "item_id": item_ids,
            "has_image": status == "vector",
            "status": status,
            "source": "file" if embeddings else "none",
            "url": embeddings.source.get("file") if embeddings else None,
            "num_bytes": pd.array([pd.NA] * len(item_ids), dtype="Int64"),
            "detail": None,
        }
    )[AVAILABILITY_COLUMNS].astype({"item_id": str, "status": str, "source": str})
    missing = int((status != "vector").sum())
    if embeddings is None:
        report = {"source": "none", "items": len(table), "attempted": 0, "fetched": 0}
        return table, report
    if missing:
        logger.warning("%d of %d items have no precomputed image vector (treated as imageless)",
                       missing, len(item_ids))  # fmt: skip
    report = {"source": "file", "file": embeddings.source.get("file"), "items": len(table),
              "with_vector": len(table) - missing, "attempted": 0, "fetched": 0}  # fmt: skip
    return table, report


def _url_fetcher(
    items: pd.DataFrame, todo: list[str], dl: dict[str, Any], results: dict[str, FetchResult]
) -> tuple[Callable[[str], FetchResult], list[str]]:
    """A fetch function over each item's candidate URLs, and the items still to fetch: hosts that do not
    answer a probe fail the run (with ``on_unreachable: mark_missing``: their items marked in ``results``)."""
    url_map = dict(zip(items["item_id"].astype(str), items["image_urls"], strict=True))
    candidates = {i: _candidate_urls(url_map.get(i), dl) for i in todo}
    down = unreachable_hosts(
        [u for urls in candidates.values() for u in urls],
        float(dl["probe_timeout_s"]),
        HostPolicy.from_config(dl["allowed_hosts"]),
    )
    if down:
        message = (
            f"Cannot reach image host(s) {sorted(down)} ({next(iter(down.values()))}); "
            "this machine looks offline. Use features.images.source: local with a folder of images, or "
            "set features.images.download.on_unreachable: mark_missing to mark these items as imageless."
        )
        if dl["on_unreachable"] != "mark_missing":
            raise ImageSourceUnreachableError(message)
        logger.warning(message)
        for item_id, urls in candidates.items():
            if urls and all(urlsplit(u).netloc in down for u in urls):
                results[item_id] = FetchResult(
                    "unreachable", url=urls[0], detail=down[urlsplit(urls[0]).netloc]
                )
        todo = [i for i in todo if i not in results]

    def fetch(item_id: str) -> FetchResult:
        return _fetch_urls([u for u in candidates[item_id] if urlsplit(u).netloc not in down], dl)

    return fetch, todo


def _fetch_into_store(
    todo: list[str], fetch: Callable[[str], FetchResult], image_store: ImageFolder, dl: dict[str, Any],
    params: dict[str, Any], results: dict[str, FetchResult],
) -> float:  # fmt: skip
    """Fetch ``todo`` concurrently into ``results``, writing each verified image into the store (holding
    its lock); returns the transfer seconds."""
    # one run at a time writes into the store (a second fails naming the first, or waits lock_wait_s)
    lock = FolderLock(image_store.root, params["lock_wait_s"], "image store", "features.images.lock_wait_s")
    if todo:
        lock.acquire()
    started = time.perf_counter()
    executor = ThreadPoolExecutor(max_workers=max(1, int(dl["workers"])))
    try:
        futures = {executor.submit(fetch, item_id): item_id for item_id in todo}
        for future in progress(as_completed(futures), total=len(futures), desc="images", unit="img"):
            item_id = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # a bug or odd input for one item must not sink the whole run
                result = FetchResult("error", detail=f"{type(exc).__name__}: {exc}"[:200])
            if result.status == "ok":
                if result.data is not None:
                    image_store.put(item_id, result.data, result.ext or "jpg")
                else:
                    image_store.put_file(item_id, Path(result.url or ""), result.ext or "jpg")
            results[item_id] = result
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        lock.release()
    transfer_s = time.perf_counter() - started
    return transfer_s


def _availability(
    item_ids: list[str], results: dict[str, FetchResult], source: str, attempted: int, transfer_s: float
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``image_availability`` and the transfer report from the fetch results (corrupt and refused images
    named in warnings)."""
    rows = []
    for item_id in item_ids:
        res = results[item_id]
        has = res.status in ("ok", "stored")
        rows.append((item_id, has, res.status, source, res.url, res.num_bytes, res.detail))
    table = pd.DataFrame(rows, columns=AVAILABILITY_COLUMNS).astype(
        {"item_id": str, "has_image": bool, "status": str, "source": str, "num_bytes": "Int64"}
    )
    counts = Counter(table["status"])
    have = int(table["has_image"].sum())
    logger.info(
        "Image availability: %d of %d items have an image; %s", have, len(table), dict(sorted(counts.items()))
    )
    if counts.get("corrupt"):
        logger.warning("%d corrupt or undecodable images were treated as missing", counts["corrupt"])
    if counts.get("refused"):
        logger.warning(
            "%d items' image URLs point at private, loopback or link-local addresses and were refused "
            "(e.g. %s); allow trusted hosts with features.images.download.allowed_hosts",
            counts["refused"],
            table.loc[table["status"] == "refused", "detail"].iloc[0],
        )
    fetched = table[table["status"] == "ok"]
    report = {
        "source": source,
        "items": len(table),
        "already_stored": int(counts.get("stored", 0)),
        "attempted": attempted,
        "fetched": len(fetched),
        "bytes": int(fetched["num_bytes"].fillna(0).sum()),
        "failed": {k: int(v) for k, v in sorted(counts.items()) if k not in ("ok", "stored")},
        "transfer_s": round(transfer_s, 3),
        "images_per_s": round(len(fetched) / transfer_s, 1) if transfer_s > 0 and len(fetched) else None,
    }
    return table, report


def acquire_images(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    local_images: ImageFolder,
    image_store: ImageFolder,
    params: dict[str, Any],
    image_embeddings: ItemEmbeddings | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Put one verified image per item of ``interactions`` into the image store and report which have one.

    Runs on the k-core survivors (``candidate_kcore_interactions``), so only images the data can keep are
    fetched. Items already in the store are kept as they are (``status == "stored"``), so re-runs and
    interrupted runs only fetch what is missing. Returns ``image_availability`` (item_id, has_image, status,
    source, url, num_bytes, detail) and a transfer report (attempted, fetched, bytes, seconds, images/s).
    With ``source: file`` nothing is fetched: an item has an image when ``image_embeddings`` has its vector.
    """
    source = _check_source(params, image_embeddings)
    if source in ("file", "none"):
        return _vector_availability(interactions, image_embeddings)
    dl = params["download"]
    item_ids = sorted(interactions["item_id"].astype(str).unique())
    stored = image_store.ids()
    todo = [i for i in item_ids if i not in stored]
    results: dict[str, FetchResult] = {i: FetchResult("stored") for i in item_ids if i in stored}
    logger.info(
        "Images (%s source): %d items, %d already in the store, %d to fetch",
        *(source, len(item_ids), len(item_ids) - len(todo), len(todo)),
    )

    if source == "local":
        if todo:
            _require_folder(local_images)

        def fetch(item_id: str) -> FetchResult:
            return _copy_local(local_images, item_id, int(dl["max_bytes"]), int(dl["max_pixels"]))

    else:
        fetch, todo = _url_fetcher(items, todo, dl, results)
    transfer_s = _fetch_into_store(todo, fetch, image_store, dl, params, results)
    return _availability(item_ids, results, source, len(todo), transfer_s)
