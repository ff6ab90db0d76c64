"""Tests for the bundled sample and its generator: determinism, format, dirt, learnable structure, size."""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import json
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "01_raw" / "sample"
REAL = ROOT.parent / "shared" / "data" / "amazon-2018-samples"
REVIEWS = "Clothing_Shoes_and_Jewelry_sample.json.gz"
META = "meta_Clothing_Shoes_and_Jewelry_sample.json.gz"
REQUIRED = ("reviewerID", "asin", "unixReviewTime")
THUMB = "._SX38_SY50_CR,0,0,38,50_"
WINDOW = (datetime(2016, 1, 1, tzinfo=UTC).timestamp(), datetime(2018, 1, 1, tzinfo=UTC).timestamp())


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_sample", ROOT / "scripts" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_sample"] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """The sample regenerated from the script into a temporary folder, with the script's own dirt counts."""
    out = tmp_path_factory.mktemp("sample")
    return out, _load_script().generate(out)


def _read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


def _parse(lines: list[str]) -> tuple[list[dict | None], int]:
    """Parsed records (None where a line is not a JSON object) and the number of such malformed lines."""
    out: list[dict | None] = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        out.append(rec if isinstance(rec, dict) else None)
    return out, sum(r is None for r in out)


@pytest.fixture(scope="module")
def reviews() -> list[dict | None]:
    return _parse(_read_lines(SAMPLE / REVIEWS))[0]


@pytest.fixture(scope="module")
def meta() -> list[dict]:
    records, bad = _parse(_read_lines(SAMPLE / META))
    assert bad == 0
    return records


# ------------------------------------------------------------------------------------------ determinism


def test_regeneration_is_byte_identical(regenerated: tuple[Path, dict[str, int]]) -> None:
    out, _ = regenerated
    committed = {p.relative_to(SAMPLE) for p in SAMPLE.rglob("*") if p.is_file() and p.name != "README.md"}
    fresh = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert fresh == committed
    different = [str(p) for p in sorted(fresh) if (out / p).read_bytes() != (SAMPLE / p).read_bytes()]
    assert not different, f"regenerated files differ from the committed sample: {different[:5]}"


def test_gzip_header_has_no_name_and_no_mtime() -> None:
    for name in (REVIEWS, META):
        head = (SAMPLE / name).read_bytes()[:10]
        assert head[:3] == b"\x1f\x8b\x08"
        assert head[3] & 0x08 == 0, "FNAME flag set"
        assert head[4:8] == b"\x00\x00\x00\x00", "mtime is not 0"


def test_sample_is_small() -> None:
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < 3 * 2**20, f"sample is {total / 2**20:.2f} MiB"


# ------------------------------------------------------------------------------------------------ format


def test_review_lines_have_the_2018_fields_and_types(reviews: list[dict | None]) -> None:
    good = [r for r in reviews if r is not None and all(k in r for k in REQUIRED)]
    assert len(good) > 8000
    types = {"overall": float, "verified": bool, "reviewTime": str, "reviewerID": str, "asin": str,
             "reviewerName": str, "summary": str, "unixReviewTime": int, "vote": str,
             "style": dict}  # fmt: skip
    for rec in good:
        assert set(rec) <= {*types, "reviewText", "image"}
        for key, typ in types.items():
            assert key not in rec or type(rec[key]) is typ, (key, rec)
        day = datetime.fromtimestamp(rec["unixReviewTime"], UTC)
        assert rec["reviewTime"] == f"{day.month:02d} {day.day}, {day.year}"
        assert rec["unixReviewTime"] % 86400 == 0
    years = Counter(datetime.fromtimestamp(r["unixReviewTime"], UTC).year for r in good)
    assert set(years) == {2015, 2016, 2017, 2018}


def test_metadata_lines_have_the_2018_fields(meta: list[dict]) -> None:
    keys = ["category", "tech1", "description", "fit", "title", "also_buy", "image", "tech2", "brand",
            "feature", "rank", "also_view", "details", "main_cat", "similar_item", "date", "price",
            "asin"]  # fmt: skip
    for rec in meta:
        assert [k for k in keys if k in rec] == list(rec)
        assert set(keys) - set(rec) <= {"description"}
    full = [r for r in meta if r["category"]]
    assert all(r["category"][0] == "Clothing, Shoes & Jewelry" and len(r["category"]) == 3 for r in full)
    assert {r["category"][1] for r in full} == {"Women", "Men", "Girls", "Boys"}
    leaves = {tuple(r["category"][1:]) for r in full}
    assert 12 <= len(leaves) <= 24 and ("Women", "Dresses") in leaves


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared with the real 2018 files is not available")
def test_field_names_match_the_real_2018_files(reviews: list[dict | None], meta: list[dict]) -> None:
    real_review_keys: set[str] = set()
    for name in ("AMAZON_FASHION_5.json.gz", "Magazine_Subscriptions_5.json.gz"):
        for line in _read_lines(REAL / name)[:3000]:
            real_review_keys |= set(json.loads(line))
    ours = set().union(*(set(r) for r in reviews if r is not None))
    assert ours == real_review_keys
    real_meta = json.loads(_read_lines(REAL / "meta_Magazine_Subscriptions.json.gz")[0])
    assert list(meta[-1]) == list(real_meta)


# -------------------------------------------------------------------------------------------------- dirt


def test_review_dirt_is_present_and_counted(
    reviews: list[dict | None], regenerated: tuple[Path, dict[str, int]]
) -> None:
    _, summary = regenerated
    n = len(reviews)
    malformed = sum(r is None for r in reviews)
    missing = {k: sum(r is not None and k not in r for r in reviews) for k in REQUIRED}
    assert malformed == summary["malformed"] >= 3
    for key in REQUIRED:
        assert missing[key] == summary[f"missing_{key}"] >= 1
    assert (malformed + sum(missing.values())) / n < 0.01, "bad lines must stay under the 1% threshold"
    lines = _read_lines(SAMPLE / REVIEWS)
    truncated = [ln for ln, r in zip(lines, reviews, strict=True) if r is None and ln.startswith('{"')]
    assert truncated, "expected truncated JSON lines"

    good = [r for r in reviews if r is not None and all(k in r for k in REQUIRED)]
    pairs = Counter((r["reviewerID"], r["asin"]) for r in good)
    assert (
        sum(c - 1 for c in pairs.values())
        >= summary["duplicate_pairs_later"] + summary["duplicate_pairs_same_time"]
        > 0
    )
    times = defaultdict(set)
    for r in good:
        times[r["reviewerID"], r["asin"]].add(r["unixReviewTime"])
    assert any(len(t) > 1 for t in times.values()), "no duplicate pair at different times"

    votes = [r["vote"] for r in good if "vote" in r]
    assert sum("," in v for v in votes) == summary["vote_with_thousands_separator"] >= 3
    assert all(v.replace(",", "").isdigit() for v in votes)
    first_style = next(i for i, r in enumerate(reviews) if r is not None and "style" in r)
    first_metal = next(i for i, r in enumerate(reviews) if r and "Metal Type:" in r.get("style", {}))
    assert first_style > 0.3 * n and first_metal > 0.75 * n, "style keys must first appear late in the file"
    assert sum("reviewText" not in r for r in good) == summary["missing_review_text"] >= 1
    digit = {r["asin"] for r in good if r["asin"].isdigit()}
    assert len(digit) >= 3 and all(a.startswith("0") for a in digit)


def test_metadata_dirt_is_present_and_counted(
    meta: list[dict], reviews: list[dict | None], regenerated: tuple[Path, dict[str, int]]
) -> None:
    _, summary = regenerated
    by_asin: dict[str, list[dict]] = defaultdict(list)
    for rec in meta:
        by_asin[rec["asin"]].append(rec)
    assert len(meta) - len(by_asin) == summary["duplicate_asin_lines"] >= 5
    assert any(len({json.dumps(r) for r in recs}) > 1 for recs in by_asin.values()), "no poorer duplicate"

    def never(pred) -> int:  # asins where no line has the field filled
        return sum(not any(pred(r) for r in recs) for recs in by_asin.values())

    assert never(lambda r: r["category"]) == summary["empty_category"] >= 3
    assert never(lambda r: r.get("description")) == summary["missing_description"] >= 3
    assert any("description" not in r for r in meta)
    assert never(lambda r: r["image"]) == summary["no_image"] >= 3
    html_titles = sum(recs[0]["title"].startswith("<span") for recs in by_asin.values())
    assert html_titles == summary["html_title"] >= 2
    descs = [d for r in meta for d in r.get("description", [])]
    assert any("&amp;" in d for d in descs) and any("<br>" in d or "<b>" in d for d in descs)
    urls = [u for r in meta for u in r["image"]]
    prefix = "https://images-na.ssl-images-amazon.com/images/I/"
    assert urls and all(THUMB in u and u.startswith(prefix) for u in urls)
    reviewed = {r["asin"] for r in reviews if r is not None and "asin" in r}
    assert len(set(by_asin) - reviewed) == summary["never_reviewed"] >= 3
    assert reviewed - set(by_asin) == set(), "every reviewed product has metadata"


def test_one_jpeg_per_product_with_an_image_and_one_corrupt(meta: list[dict]) -> None:
    with_image = {r["asin"] for r in meta if r["image"]}
    files = {p.stem: p for p in (SAMPLE / "images").glob("*.jpg")}
    assert set(files) == with_image
    corrupt = []
    for asin, path in files.items():
        try:
            with Image.open(path) as im:
                im.load()
                assert im.size == (64, 64) and im.mode == "RGB"
                assert not im.info.get("exif") and "icc_profile" not in im.info
        except OSError:
            corrupt.append(asin)
    assert len(corrupt) == 1


# ------------------------------------------------------------------------------------- learnable structure


def _kcore_sequences(reviews: list[dict | None], k: int = 5) -> dict[str, list[str]]:
    """Our own cleaning: skip bad lines, 2016-2017 window, dedup (keep first), k-core; time-ordered."""
    rows = [
        (r["unixReviewTime"], i, r["reviewerID"], r["asin"])
        for i, r in enumerate(reviews)
        if r is not None and all(f in r for f in REQUIRED) and WINDOW[0] <= r["unixReviewTime"] < WINDOW[1]
    ]
    rows.sort()
    seen: set[tuple[str, str]] = set()
    kept = []
    for _, _, user, item in rows:
        if (user, item) not in seen:
            seen.add((user, item))
            kept.append((user, item))
    while True:
        users, items = Counter(u for u, _ in kept), Counter(i for _, i in kept)
        nxt = [(u, i) for u, i in kept if users[u] >= k and items[i] >= k]
        if len(nxt) == len(kept):
            break
        kept = nxt
    seqs: dict[str, list[str]] = defaultdict(list)
    for user, item in kept:
        seqs[user].append(item)
    return seqs


def test_sequential_signal_beats_popularity(reviews: list[dict | None]) -> None:
    seqs = _kcore_sequences(reviews)
    n_items = len({i for s in seqs.values() for i in s})
    assert len(seqs) >= 300 and n_items >= 200
    assert min(len(s) for s in seqs.values()) >= 5
    # leave-one-out: the last item is the test target, training uses all but the last two
    pop: Counter[str] = Counter()
    trans: dict[str, Counter[str]] = defaultdict(Counter)
    for s in seqs.values():
        train = s[:-2]
        pop.update(train)
        for a, b in itertools.pairwise(train):
            trans[a][b] += 1
    by_pop = sorted(pop, key=lambda i: (-pop[i], i))
    top_pop = set(by_pop[:10])
    hits_pop = hits_seq = 0
    for s in seqs.values():
        follow = trans[s[-2]]
        ranked = sorted(follow, key=lambda i: (-follow[i], -pop[i], i))[:10]
        ranked += [i for i in by_pop if i not in follow][: 10 - len(ranked)]
        hits_pop += s[-1] in top_pop
        hits_seq += s[-1] in ranked
    recall_pop, recall_seq = hits_pop / len(seqs), hits_seq / len(seqs)
    assert recall_seq >= 2 * recall_pop and recall_seq >= recall_pop + 0.1, (recall_seq, recall_pop)
    # popularity stays fairly flat: the most popular item has a small share of the training interactions
    assert max(pop.values()) / sum(pop.values()) < 0.02
