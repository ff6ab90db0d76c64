"""One raw file being read: the block stream, the detected format, a progress bar, timing and the report.

The machinery behind both ingestion nodes; ``stream.py`` splits and parses blocks, ``formats.py`` names the
formats, ``rows.py`` maps parsed pieces onto the contract columns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import fsspec

from maf_pipeline.progress import progress

from .formats import detect_format, resolve_format
from .stream import (
    SKIP_REASONS,
    Block,
    BlockParser,
    BlockReader,
    IngestionError,
    ParseStats,
    Piece,
    first_records,
)

if TYPE_CHECKING:  # not imported at run time: maf_pipeline.datasets pulls in torch (~600 MB of RSS)
    from maf_pipeline.datasets import RawSource

logger = logging.getLogger(__name__)


def _mb(value: float) -> int:
    return int(float(value) * (1 << 20))


class RawFile:
    """One raw file being read: block stream, detected format, progress bar, timing and the final report."""

    def __init__(self, source: RawSource, cfg: dict[str, Any], kind: str) -> None:
        self.source = source
        self.cfg = cfg
        self.kind = kind
        self.reader = BlockReader(source, _mb(cfg["block_size_mb"]))
        self.format = ""
        self.detected = ""
        self.python_literals = False
        self._first: Block | None = None
        self._started = 0.0

    def __enter__(self) -> RawFile:
        self._started = time.perf_counter()
        self.reader.__enter__()
        try:
            self._blocks = iter(self.reader)
            self._first = next(self._blocks, None)
            name = self.source.name
            if self._first is None:
                raise IngestionError(f"{name}: the file is empty")
            detect_lines = int(self.cfg["detect_lines"])
            records, tried, self.python_literals = first_records(self._first.data, detect_lines)
            if tried == 0:
                raise IngestionError(f"{name}: the file is empty (only blank lines at its start)")
            forced = str(self.cfg["format"]) != "auto"
            if not forced:
                self.detected = detect_format(records, self.kind, self.python_literals, name, tried)
            self.format = resolve_format(self.cfg["format"], self.detected, name)
        except BaseException:
            self.reader.__exit__(None, None, None)
            raise
        logger.info(
            "Reading %s %s (format %s%s)", self.kind, name, self.format, "" if self.detected else ", forced"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.__exit__(*exc)

    def pieces(self, parser: BlockParser) -> Iterator[Piece]:
        """Parse every block in file order."""
        total = None
        try:
            fs = fsspec.filesystem(self.source.protocol, **dict(self.source.storage_options))
            total = fs.size(self.source.path)
        except (OSError, NotImplementedError, ValueError):
            pass
        done = 0
        with progress(total=total, unit="B", unit_scale=True, desc=self.source.name) as bar:
            first, self._first = self._first, None
            blocks = self._blocks if first is None else _chain(first, self._blocks)
            for block, pieces in parser.parse_all(blocks):
                yield from pieces
                bar.update(block.compressed_pos - done)
                done = block.compressed_pos

    def finish(self, stats: ParseStats, *, kept: int, hint: str = "", **extra: Any) -> dict[str, Any]:
        """Check the bad-line share, log, and return the per-file report.

        ``hint`` (the likely cause of bad values, e.g. milliseconds read as seconds) ends the messages.
        """
        name = self.source.name
        seconds = time.perf_counter() - self._started
        if stats.lines == 0:
            raise IngestionError(f"{name}: the file is empty (no non-blank lines)")
        skipped = stats.skipped_total
        share = skipped / stats.lines
        reasons = ", ".join(
            f"{k}: {v:,}" + _fields_note(stats.fields.get(k)) for k, v in sorted(stats.skipped.items())
        )
        first_bad = [line for line, _ in stats.examples]
        hint = f"; {hint}" if hint else ""
        if skipped:
            logger.warning(
                "%s: skipped %d of %d lines (%s); first bad lines: %s%s",
                name,
                skipped,
                stats.lines,
                reasons,
                first_bad,
                hint,
            )
        if stats.repaired:
            logger.warning(
                "%s: %d lines had invalid UTF-8 in text fields, replaced by U+FFFD "
                "(ingestion.invalid_utf8: replace); first such lines: %s",
                name,
                stats.repaired,
                stats.repaired_examples,
            )
        limit = float(self.cfg["max_bad_fraction"])
        if share > limit:
            raise IngestionError(
                f"{name}: {skipped:,} of {stats.lines:,} lines ({share:.2%}) are unusable ({reasons}), "
                f"more than ingestion.max_bad_fraction = {limit:.2%}; first bad lines: {first_bad}{hint}"
            )
        mb = self.reader.bytes_out / 1e6
        report = {
            "file": name,
            "path": self.source.path,
            "kind": self.kind,
            "format": self.format,
            "format_detected": self.detected or None,
            "compression": self.reader.compression,
            "lines_read": stats.lines,
            "kept": kept,
            "skipped": {k: stats.skipped.get(k, 0) for k in SKIP_REASONS},
            "skipped_share": round(share, 6),
            "skipped_fields": {k: dict(v) for k, v in sorted(stats.fields.items())},
            "first_bad_lines": [{"line": line, "reason": reason} for line, reason in stats.examples],
            "invalid_utf8_replaced": {"lines": stats.repaired, "first_lines": stats.repaired_examples},
            **extra,
            "compressed_bytes": self.reader.bytes_in,
            "uncompressed_bytes": self.reader.bytes_out,
            "fallback_bytes": stats.fallback_bytes,
            "seconds": round(seconds, 3),
            "mb_per_s": round(mb / seconds, 1) if seconds > 0 else None,
        }
        logger.info(
            "%s: %s lines read, %s kept, %s skipped in %.1f s (%.0f MB/s uncompressed)",
            name,
            f"{stats.lines:,}",
            f"{kept:,}",
            f"{skipped:,}",
            seconds,
            report["mb_per_s"] or 0,
        )
        return report


def _fields_note(fields: dict[str, int] | None) -> str:
    """ " in field x: n, y: m" for a reason's per-field counts (empty when unknown)."""
    if not fields:
        return ""
    return " in " + ", ".join(f"{k}: {v:,}" for k, v in sorted(fields.items(), key=lambda kv: -kv[1]))


def _chain(first: Block, rest: Iterator[Block]) -> Iterator[Block]:
    yield first
    yield from rest
