"""Benchmark of review ingestion: throughput (MB/s of uncompressed gzip input) and peak memory (RSS).

Generates a synthetic reviews file in the Amazon 2018 format (realistic line lengths, ``style`` objects
with varying keys that first appear late, ``vote`` strings with thousands separators, all-digit asins) in a
temporary folder, then runs the ``ingest_reviews`` node on it in a fresh subprocess, so that the reported peak
RSS is the node's own (interpreter and imports included). CPU seconds are reported too: wall-clock throughput
on a shared 2-core machine depends on what else runs::

    .venv/bin/python benchmarks/bench_ingestion.py --size-gb 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from isal import igzip

_WORDS_TEXT = (
    "the a and this these great quality fit size small large love nice comfortable dress shoes wear color "
    "would buy again price fabric soft runs true to order returned perfect cute material looks picture gift "
    "daughter husband summer winter boots sandals jacket shirt pants jeans bag watch ring necklace"
)


def generate(path: Path, size_bytes: int, seed: int = 0) -> tuple[int, int]:
    """Write a gzip 2018-format reviews file of about ``size_bytes`` uncompressed; return (bytes, lines)."""
    rng = random.Random(seed)
    words = _WORDS_TEXT.split()
    texts = [" ".join(rng.choices(words, k=rng.randint(4, 100))) for _ in range(4000)]
    summaries = [" ".join(rng.choices(words, k=rng.randint(1, 6))) for _ in range(500)]
    users = [f"A{rng.randrange(16**12):012X}" for _ in range(200_000)]
    items = [f"B{rng.randrange(10**9):09d}" for _ in range(40_000)] + [f"{i:010d}" for i in range(0, 2000, 7)]
    sizes = [" Small", " Medium", " Large", " X-Large", " 8", " 9.5 B(M) US"]
    colors = [" Black", " Blue/Orange", " Navy", " Red/White", " Heather Grey"]
    written = lines = 0
    with igzip.open(path, "wb", compresslevel=2) as out:
        batch: list[str] = []
        while written < size_bytes:
            stamp = rng.randint(1_262_304_000, 1_538_352_000)  # 2010-01-01 .. 2018-10-01
            vote = f'"vote": "{rng.randint(1, 3000):,}", ' if rng.random() < 0.15 else ""
            style = ""
            if written > size_bytes // 3 and rng.random() < 0.5:  # style first appears late, keys vary
                style = f'"style": {{"Size:": "{rng.choice(sizes)}", "Color:": "{rng.choice(colors)}"}}, '
            elif written > size_bytes // 2 and rng.random() < 0.1:
                style = f'"style": {{"Format:": " Kindle Edition", "Length:": " {rng.randint(1, 9)} ft"}}, '
            day = time.gmtime(stamp)
            verified = "true" if rng.random() < 0.8 else "false"
            line = (
                f'{{"overall": {rng.randint(1, 5)}.0, {vote}"verified": {verified}, '
                f'"reviewTime": "{day.tm_mon:02d} {day.tm_mday}, {day.tm_year}", '
                f'"reviewerID": "{rng.choice(users)}", "asin": "{rng.choice(items)}", {style}'
                f'"reviewerName": "Customer {rng.randint(1, 99999)}", "reviewText": "{rng.choice(texts)}", '
                f'"summary": "{rng.choice(summaries)}", "unixReviewTime": {stamp}}}\n'
            )
            batch.append(line)
            written += len(line)
            lines += 1
            if len(batch) >= 20_000:
                out.write("".join(batch).encode())
                batch.clear()
        out.write("".join(batch).encode())
    return written, lines


def _raw_source_class(import_package: bool) -> type:
    """``RawSource``, by default loaded from its file without running ``maf_pipeline/datasets/__init__.py``.

    That package also exports the safetensors dataset and so imports torch (about 600 MB of RSS) although the
    reader never uses it; ``--import-package`` measures with it.
    """
    if import_package:
        from maf_pipeline.datasets import RawSource

        return RawSource
    import maf_pipeline

    spec = importlib.util.spec_from_file_location(
        "_bench_raw_file", Path(maf_pipeline.__file__).parent / "datasets" / "raw_file.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.RawSource


def run_once(path: str, block_size_mb: float, window: list[str | None], import_package: bool = False) -> dict:
    """Ingest ``path`` in this process and return the report plus peak RSS (call in a fresh subprocess)."""
    from maf_pipeline.pipelines.ingestion.nodes import ingest_reviews

    RawSource = _raw_source_class(import_package)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_before, cpu_before = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    frame, report = ingest_reviews(
        RawSource(path), {"block_size_mb": block_size_mb}, {"start": window[0], "end": window[1]}
    )
    report["node_seconds_with_pandas"] = round(time.perf_counter() - started, 3)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime - cpu_before, 3)
    report["rows"] = len(frame)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    report["rss_after_imports_mb"] = round(rss_before, 1)
    return report


def main() -> None:
    """Generate (or reuse) the synthetic file, run the node in a subprocess and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="uncompressed size of the synthetic file")
    parser.add_argument("--file", help="reuse this reviews file instead of generating one")
    parser.add_argument("--block-size-mb", type=float, default=8)
    parser.add_argument("--window", nargs=2, default=["2016-01-01", "2017-12-31"], metavar=("START", "END"))
    parser.add_argument("--no-window", action="store_true", help="keep every row (largest output)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--import-package", action="store_true", help="import RawSource via maf_pipeline.datasets (torch too)"
    )
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: child process mode
    args = parser.parse_args()
    window = [None, None] if args.no_window else args.window
    if args.run:
        print(json.dumps(run_once(args.run, args.block_size_mb, window, args.import_package)))
        return
    with tempfile.TemporaryDirectory(prefix="bench_ingestion_") as tmp:
        path = Path(args.file) if args.file else Path(tmp) / "reviews_2018.json.gz"
        if not args.file:
            started = time.perf_counter()
            size, lines = generate(path, int(args.size_gb * 1e9))
            print(
                f"generated {size / 1e6:,.0f} MB ({lines:,} lines, {path.stat().st_size / 1e6:,.0f} MB gzip) "
                f"in {time.perf_counter() - started:.0f} s"
            )
        for _ in range(args.repeat):
            child = [sys.executable, __file__, "--run", str(path), "--block-size-mb", str(args.block_size_mb)]
            child += ["--no-window"] if args.no_window else ["--window", *window]
            child += ["--import-package"] if args.import_package else []
            result = subprocess.run(child, check=True, capture_output=True, text=True)
            report = json.loads(result.stdout.strip().splitlines()[-1])
            mb = report["uncompressed_bytes"] / 1e6
            print(
                f"{mb:,.0f} MB in {report['seconds']:.2f} s: {report['mb_per_s']:,.0f} MB/s uncompressed "
                f"(node incl. pandas conversion: {mb / report['node_seconds_with_pandas']:,.0f} MB/s; "
                f"CPU {report['cpu_seconds']:.2f} s = {mb / report['cpu_seconds']:,.0f} MB per CPU-second); "
                f"peak RSS {report['peak_rss_mb']:,.0f} MB "
                f"(after imports {report['rss_after_imports_mb']:,.0f} MB)"
            )
            print(
                f"  {report['lines_read']:,} lines, {report['rows']:,} kept, {report['outside_window']:,} "
                f"outside the window, {sum(report['skipped'].values())} skipped"
            )


if __name__ == "__main__":
    main()
