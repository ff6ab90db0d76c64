"""Scale benchmark: the real Kedro pipeline on a generated full-size Amazon 2018 dump, one row per node.

Generates once per size (outside git; reused by later runs) a realistic dump: ``--lines`` review lines (Zipf
users and items, 2010-2018, the 2018 field mix with ``style``, ``vote`` and long texts), metadata for every
item of the review pool plus four times as many never-reviewed items, and image URLs pointing at a local HTTP
server of generated JPEGs (some 404, some slow, some corrupt). Then, in the same run:

1. the reviews-only ingestion of the same file in a fresh subprocess (``ingest_reviews``: time, MB/s, RSS);
2. ``kedro run --pipelines=data`` (ingestion through ``build_sequences``, the images included; a process that
   never imports torch; ``--train`` runs the ``full`` pipeline instead) in a copy of the project whose
   ``conf/local`` points at the dump, with ``source: url`` images served by this process;

and prints the run profile the project's hook wrote (``data/08_reporting/run_profile.json``): per node wall
s, CPU s, peak RSS, rows in and out; the image transfers; the peak RSS of the ``kedro run`` process (rusage of
the child) and the data-side wall time against the reviews-only ingestion::

    nice -n 10 .venv/bin/python benchmarks/bench_scale.py --lines 8000000 --data-dir /tmp/maf_scale
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from isal import igzip

REPO = Path(__file__).resolve().parents[1]
EPOCH_2010, EPOCH_2018_10 = 1_262_304_000, 1_538_352_000
WORDS = (  # noqa: SIM905 - a sentence reads better than a list of 60 strings
    "the a and this these great quality fit size small large love nice comfortable dress shoes wear color "
    "would buy again price fabric soft runs true to order returned perfect cute material looks picture gift "
    "daughter husband summer winter boots sandals jacket shirt pants jeans bag watch ring necklace cotton "
    "polyester stretch waist length sleeve pocket zipper button leather rubber sole heel arch support"
).split()
LABELS = [
    ["Clothing, Shoes & Jewelry", "Women", "Clothing", "Dresses"],
    ["Clothing, Shoes & Jewelry", "Women", "Shoes", "Sandals"],
    ["Clothing, Shoes & Jewelry", "Men", "Clothing", "Shirts"],
    ["Clothing, Shoes & Jewelry", "Men", "Shoes", "Boots"],
    ["Clothing, Shoes & Jewelry", "Girls", "Clothing", "Tops &amp; Tees"],
    ["Clothing, Shoes & Jewelry", "Boys", "Clothing", "Jeans"],
    ["Clothing, Shoes & Jewelry", "Women", "Jewelry", "Necklaces"],
    ["Clothing, Shoes & Jewelry", "Novelty &amp; More", "Clothing"],
]
STYLES = [
    ' "style": {"Size:": " Large", "Color:": " Black"},',
    ' "style": {"Size:": " 9.5 B(M) US", "Color:": " Navy"},',
    ' "style": {"Color:": " Heather Grey"},',
    ' "style": {"Size Name:": " X-Large"},',
]
SERVER_PORT = 18765
# per 1000 image paths (by CRC32): 20 answer 404, 10 are corrupt, 10 are slow (SLOW_S), the rest are JPEGs
FAIL_404, FAIL_CORRUPT, SLOW, SLOW_S = 20, 30, 40, 0.5


# ------------------------------------------------------------------------------------------ generation
def _zipf(rng: np.random.Generator, n_pool: int, size: int, s: float, q: float) -> np.ndarray:
    """Ranks in ``[0, n_pool)`` drawn with probability proportional to ``1 / (rank + q) ** s``."""
    weights = 1.0 / (np.arange(n_pool) + q) ** s
    cdf = np.cumsum(weights / weights.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(size)), n_pool - 1)


def _texts(rng: np.random.Generator, count: int, mean_words: float) -> list[str]:
    lengths = np.clip(rng.lognormal(np.log(mean_words), 0.8, count).astype(int), 1, 1500)
    words = np.array(WORDS)
    return [" ".join(words[rng.integers(0, len(words), n)]) for n in lengths]


def item_id(index: np.ndarray | int) -> np.ndarray:
    """Distinct asins for distinct indices (a bijection of [0, 1e9)); one in 50 is all digits."""
    scrambled = (np.asarray(index, dtype=np.int64) * 2654435761 + 12345) % 10**9
    return np.where(
        np.asarray(index) % 50 == 0,
        np.char.add("0", np.char.zfill(scrambled.astype(str), 9)),
        np.char.add("B", np.char.zfill(scrambled.astype(str), 9)),
    )


def generate(folder: Path, lines: int, seed: int = 2018, port: int = SERVER_PORT) -> dict:
    """Write ``reviews.json.gz`` and ``meta.json.gz`` (Amazon 2018 format) into ``folder``; return sizes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_users, n_items = max(lines // 3, 1000), max(lines // 20, 500)
    texts = _texts(rng, 20_000, 35)
    summaries = _texts(rng, 2_000, 4)
    names = [f"Customer {i}" for i in range(5000)]
    started = time.perf_counter()
    written = 0
    reviewed = np.zeros(n_items, dtype=bool)
    with igzip.open(folder / "reviews.json.gz", "wb", compresslevel=1) as out:
        for start in range(0, lines, 200_000):
            n = min(200_000, lines - start)
            users = _zipf(rng, n_users, n, 1.05, 20.0)
            items = _zipf(rng, n_items, n, 0.95, 50.0)
            reviewed[items] = True
            stamps = (rng.integers(EPOCH_2010, EPOCH_2018_10, n) // 86400) * 86400
            days = stamps.astype("datetime64[s]").astype("datetime64[D]")
            years = days.astype("datetime64[Y]").astype(int) + 1970
            months = days.astype("datetime64[M]").astype(int) % 12 + 1
            mdays = (days - days.astype("datetime64[M]")).astype(int) + 1
            user_ids = np.char.add(
                "A", np.char.zfill(((users * 2862933555777941757) % 16**12).astype(str), 13)
            )
            asins = item_id(items)
            ratings = rng.choice([1, 2, 3, 4, 5], n, p=[0.06, 0.05, 0.1, 0.2, 0.59])
            votes = rng.integers(1, 3000, n)
            has_vote, has_style = rng.random(n) < 0.15, rng.random(n) < 0.5
            style_pick = rng.integers(0, len(STYLES), n)
            text_pick, summary_pick, name_pick = (
                rng.integers(0, len(texts), n),
                rng.integers(0, len(summaries), n),
                rng.integers(0, len(names), n),
            )
            verified = rng.random(n) < 0.8
            chunk = []
            for j in range(n):
                vote = f' "vote": "{votes[j]:,}",' if has_vote[j] else ""
                style = STYLES[style_pick[j]] if has_style[j] else ""
                chunk.append(
                    f'{{"overall": {ratings[j]}.0,{vote} "verified": {"true" if verified[j] else "false"}, '
                    f'"reviewTime": "{months[j]:02d} {mdays[j]}, {years[j]}", "reviewerID": "{user_ids[j]}", '
                    f'"asin": "{asins[j]}",{style} "reviewerName": "{names[name_pick[j]]}", '
                    f'"reviewText": "{texts[text_pick[j]]}", "summary": "{summaries[summary_pick[j]]}", '
                    f'"unixReviewTime": {stamps[j]}}}\n'
                )
            blob = "".join(chunk).encode()
            written += len(blob)
            out.write(blob)
    reviews_bytes, reviews_s = written, time.perf_counter() - started

    # metadata: every item of the pool (reviewed ones included) plus 4x never-reviewed ones, shuffled
    started = time.perf_counter()
    indices = rng.permutation(np.arange(5 * n_items))
    descriptions = _texts(rng, 5_000, 120)
    titles = _texts(rng, 5_000, 9)
    features = _texts(rng, 2_000, 8)
    written = 0
    with igzip.open(folder / "meta.json.gz", "wb", compresslevel=1) as out:
        for start in range(0, len(indices), 100_000):
            part = indices[start : start + 100_000]
            n = len(part)
            asins = item_id(part)
            also = item_id(rng.integers(0, 5 * n_items, (n, 6)))
            has_desc, has_title, has_cat, has_img = rng.random((4, n)) < [[0.9], [0.97], [0.97], [0.93]]
            html_desc = rng.random(n) < 0.1
            pick = rng.integers(0, 5_000, (3, n))
            label_pick = rng.integers(0, len(LABELS), n)
            images = rng.integers(1, 4, n)
            chunk = []
            for j in range(n):
                a = asins[j]
                desc = descriptions[pick[0, j]] if has_desc[j] else ""
                if html_desc[j]:
                    desc = f"<b>{desc}</b> &amp; more<br>"
                category = json.dumps(LABELS[label_pick[j]]) if has_cat[j] else "[]"
                urls = ", ".join(
                    f'"http://127.0.0.1:{port}/images/I/{a}{k}._SX38_SY50_CR,0,0,38,50_.jpg"'
                    for k in range(images[j])
                )
                title = titles[pick[1, j]] if has_title[j] else ""
                also_buy = ", ".join(f'"{x}"' for x in also[j])
                chunk.append(
                    f'{{"category": {category}, "tech1": "", "description": ["{desc}"], "fit": "", '
                    f'"title": "{title}", "also_buy": [{also_buy}], "image": [{urls if has_img[j] else ""}], '
                    f'"tech2": "", "brand": "Brand {pick[2, j] % 700}", '
                    f'"feature": ["{features[pick[2, j] % 2000]}", "Machine wash"], '
                    f'"rank": "{pick[0, j] * 37:,} in Clothing, Shoes &amp; Jewelry (", '
                    f'"also_view": [{also_buy}], "details": {{"Package Dimensions:": "10 x 8 x 1 inches"}}, '
                    f'"main_cat": "Clothing, Shoes &amp; Jewelry", "similar_item": "", "date": "", '
                    f'"price": "${pick[1, j] % 90 + 9}.99", "asin": "{a}"}}\n'
                )
            blob = "".join(chunk).encode()
            written += len(blob)
            out.write(blob)
    info = {
        "lines": lines,
        "reviews_bytes": reviews_bytes,
        "reviews_generate_s": round(reviews_s, 1),
        "metadata_lines": len(indices),
        "metadata_bytes": written,
        "metadata_generate_s": round(time.perf_counter() - started, 1),
        "reviewed_pool_items": int(reviewed.sum()),
        "port": port,
    }
    (folder / "dump.json").write_text(json.dumps(info, indent=2))
    return info


# ---------------------------------------------------------------------------------------- image server
def _jpeg_pool(count: int = 32) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(7)
    pool = []
    for _ in range(count):
        pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((320, 320), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)
        pool.append(buf.getvalue())
    return pool


class ImageServer:
    """A threaded HTTP server of generated JPEGs on 127.0.0.1; the outcome of a path is fixed by its CRC32."""

    def __init__(self, port: int) -> None:
        pool = _jpeg_pool()
        self.counts = {"ok": 0, "404": 0, "corrupt": 0, "slow": 0}
        counts = self.counts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                key = zlib.crc32(self.path.encode())
                kind = key % 1000
                if kind < FAIL_404:
                    counts["404"] += 1
                    self.send_error(404)
                    return
                body = pool[key % len(pool)]
                if kind < FAIL_CORRUPT:
                    counts["corrupt"] += 1
                    body = b"\xff\xd8\xff\xe0" + body[40:400]
                elif kind < SLOW:
                    counts["slow"] += 1
                    time.sleep(SLOW_S)
                counts["ok"] += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        http.server.ThreadingHTTPServer.daemon_threads = True
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -------------------------------------------------------------------------------------------- running
def reviews_only(path: Path) -> dict:
    """``ingest_reviews`` on ``path`` in a fresh subprocess (benchmarks/bench_ingestion.py's child mode)."""
    child = [sys.executable, str(REPO / "benchmarks" / "bench_ingestion.py"), "--run", str(path)]
    result = subprocess.run(child, check=True, capture_output=True, text=True, env=_env())
    return json.loads(result.stdout.strip().splitlines()[-1])


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "DO_NOT_TRACK": "true",
        "KEDRO_DISABLE_TELEMETRY": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "KEDRO_LOGGING_CONFIG": str(REPO / "conf" / "logging.yml"),
        "PYTHONUNBUFFERED": "1",
    }
    return {**env, **(extra or {})}


def make_project(folder: Path, dump: Path, port: int) -> Path:
    """A project copy (conf + pyproject, own data/ and MLflow store) whose conf/local points at the dump."""
    project = folder / "project"
    if project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True)
    shutil.copy2(REPO / "pyproject.toml", project / "pyproject.toml")
    (project / "src").mkdir()
    shutil.copytree(REPO / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    for layer in sorted(p.name for p in (REPO / "data").iterdir() if p.is_dir()):
        (project / "data" / layer).mkdir(parents=True, exist_ok=True)
    local = project / "conf" / "local"
    local.mkdir()
    raw = "  type: maf_pipeline.datasets.RawFileDataset\n  filepath: {}\n"
    (local / "catalog.yml").write_text(
        "raw_reviews:\n"
        + raw.format(dump / "reviews.json.gz")
        + "raw_metadata:\n"
        + raw.format(dump / "meta.json.gz")
    )
    (local / "parameters.yml").write_text(
        "preprocessing:\n"
        '  dataset_name: "Generated Clothing-like dump"\n'
        "  required_modalities: [image, text, category]\n"
        "features:\n"
        "  images:\n"
        "    source: url\n"
        "    download:\n"
        "      workers: 8\n"
        "      retries: 1\n"
        "      probe_timeout_s: 3\n"
        '      allowed_hosts: ["127.0.0.1"]\n'
    )
    return project


def run_kedro(project: Path, args: list[str]) -> tuple[float, float, float, int]:
    """Run ``kedro`` in ``project``; returns (wall s, CPU s, peak RSS MB of the kedro process, exit code)."""
    cmd = [sys.executable, "-m", "kedro", *args]
    log = open(project / "kedro_run.log", "w")  # noqa: SIM115 - closed below
    started = time.perf_counter()
    # one MLflow store for all runs (as a user has): creating a fresh store is no part of the data side
    mlflow_dir = project.parent.parent / "mlflow"
    mlflow_dir.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        cmd, cwd=project, env=_env({"MAF_MLFLOW_DIR": str(mlflow_dir)}), stdout=log, stderr=subprocess.STDOUT
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    wall = time.perf_counter() - started
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode


def _fmt_rows(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def print_profile(profile: dict, reviews: dict, kedro: tuple[float, float, float, int], info: dict) -> dict:
    """Print one row per node and the summary; return the summary."""
    print(f"\n{'node':32} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12} {'rows in':>12} {'rows out':>12}")
    for row in profile["nodes"]:
        print(
            f"{row['node']:32} {row['wall_s']:8.1f} {row['cpu_s']:8.1f} {row['peak_rss_mb']:12,.0f} "
            f"{_fmt_rows(row.get('rows_in')):>12} {_fmt_rows(row.get('rows_out')):>12}"
        )
    images = profile.get("images") or {}
    transfer_s = float(images.get("transfer_s") or 0.0)
    wall, cpu, rss, _ = kedro
    data_wall = wall - transfer_s
    summary = {
        "review_lines": info["lines"],
        "reviews_mb": round(info["reviews_bytes"] / 1e6),
        "metadata_mb": round(info["metadata_bytes"] / 1e6),
        "reviews_only_s": reviews["seconds"],
        "reviews_only_mb_per_s": reviews["mb_per_s"],
        "reviews_only_peak_rss_mb": reviews["peak_rss_mb"],
        "kedro_wall_s": round(wall, 1),
        "kedro_cpu_s": round(cpu, 1),
        "kedro_peak_rss_mb": round(rss),
        "image_transfer_s": round(transfer_s, 1),
        "data_side_wall_s": round(data_wall, 1),
        "data_side_over_reviews_only": round(data_wall / reviews["seconds"], 2),
        "images": images,
    }
    reports = profile.get("_reports", {})
    funnel = reports.get("stage_counts_images") or {}
    acquired, final = funnel.get("before", {}).get("items"), funnel.get("after", {}).get("items")
    summary.update(
        items_acquired=acquired,
        final_items=final,
        acquired_over_final=round(acquired / final, 3) if acquired and final else None,
        candidate_items=(reports.get("stage_counts_completeness") or {}).get("after", {}).get("items"),
        reviews_mb_per_s_in_run=(reports.get("reviews_report") or {}).get("mb_per_s"),
        metadata_mb_per_s_in_run=(reports.get("metadata_report") or {}).get("mb_per_s"),
        metadata_seconds_in_run=(reports.get("metadata_report") or {}).get("seconds"),
    )
    print(
        f"\nitems: {summary['candidate_items'] or 0:,} candidates after completeness, "
        f"{acquired or 0:,} acquired (candidate k-core), {final or 0:,} final = "
        f"{summary['acquired_over_final']}x; in the run: reviews {summary['reviews_mb_per_s_in_run']} MB/s, "
        f"metadata {summary['metadata_mb_per_s_in_run']} MB/s ({summary['metadata_seconds_in_run']} s)"
    )
    print(
        f"reviews only (same file, same run): {reviews['seconds']:.1f} s, {reviews['mb_per_s']:,.0f} MB/s, "
        f"peak RSS {reviews['peak_rss_mb']:,.0f} MB"
    )
    print(
        f"kedro run: {wall:.1f} s wall ({cpu:.1f} s CPU), peak RSS {rss:,.0f} MB; image transfers "
        f"{transfer_s:.1f} s ({images.get('fetched', 0):,} fetched, {images.get('bytes', 0) / 1e6:,.1f} MB, "
        f"{images.get('images_per_s') or 0:.0f} images/s); data side without them {data_wall:.1f} s = "
        f"{summary['data_side_over_reviews_only']:.1f}x the reviews-only ingestion"
    )
    return summary


def main() -> None:
    """Generate (or reuse) the dump, measure the reviews-only ingestion, run Kedro and print the profile."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=8_000_000, help="review lines of the generated dump")
    parser.add_argument("--data-dir", default="/tmp/maf_scale", help="where dumps and project copies live")
    parser.add_argument("--seed", type=int, default=2018)
    parser.add_argument("--port", type=int, default=SERVER_PORT, help="port of the local image server")
    parser.add_argument("--train", action="store_true", help="run the whole `full` pipeline (training too)")
    parser.add_argument("--generate-only", action="store_true")
    args = parser.parse_args()

    dump = Path(args.data_dir) / f"dump_{args.lines}"
    if (dump / "dump.json").exists():
        info = json.loads((dump / "dump.json").read_text())
    else:
        print(f"generating {args.lines:,} review lines into {dump} ...", flush=True)
        info = generate(dump, args.lines, args.seed, args.port)
    print(json.dumps(info), flush=True)
    if args.generate_only:
        return
    reviews = reviews_only(dump / "reviews.json.gz")
    project = make_project(Path(args.data_dir) / f"run_{args.lines}", dump, int(info["port"]))
    pipeline = "full" if args.train else "data"
    with ImageServer(int(info["port"])) as server:
        kedro = run_kedro(project, ["run", f"--pipelines={pipeline}"])
    if kedro[3] != 0:
        tail = (project / "kedro_run.log").read_text()[-4000:]
        raise SystemExit(f"kedro run failed ({kedro[3]}):\n{tail}")
    reporting = project / "data" / "08_reporting"
    profile = json.loads((reporting / "run_profile.json").read_text())
    profile["_reports"] = {
        name: json.loads((reporting / f"{name}.json").read_text())
        for name in ("stage_counts_completeness", "stage_counts_images")
        if (reporting / f"{name}.json").exists()
    }
    for kind in ("reviews", "metadata"):
        path = reporting / "ingestion" / f"{kind}_report.json"
        if path.exists():
            profile["_reports"][f"{kind}_report"] = json.loads(path.read_text())
    summary = print_profile(profile, reviews, kedro, info)
    summary["server"] = dict(server.counts)
    (Path(args.data_dir) / f"summary_{args.lines}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
