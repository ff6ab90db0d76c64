"""Streaming JSON-lines reading: gzip decoded in a background thread, Arrow parsing per block, line fallback.

Memory stays bounded by a few blocks whatever the file size: the decoder thread cuts the decompressed stream
into blocks of whole lines, Arrow parses each block with an explicit schema (only the wanted fields are
materialised), and a block that Arrow rejects is bisected so that only the pieces holding bad lines go through
the slow per-line parser.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import queue
import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pj
from isal import isal_zlib

if TYPE_CHECKING:  # not imported at run time: maf_pipeline.datasets pulls in torch
    from maf_pipeline.datasets import RawSource

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
_END = object()
# Pieces smaller than this go straight to the per-line parser instead of being bisected further.
MIN_BISECT_BYTES = 256 * 1024


class IngestionError(ValueError):
    """A raw file cannot be ingested; the message names the file and says why."""


@dataclass(frozen=True)
class Block:
    """Whole lines of decompressed input, with the file line number of the first one (1-based)."""

    data: bytes
    first_line: int
    compressed_pos: int


class BlockReader:
    """Iterates over blocks of whole lines of a raw file, plain or gzip (detected from the magic bytes).

    Decompression (ISA-L, which releases the GIL) runs in a background thread feeding a small bounded queue,
    so it overlaps with Arrow parsing in the consumer. Use as a context manager: the thread stops on exit.
    """

    def __init__(
        self, source: RawSource, block_bytes: int, chunk_bytes: int | None = None, queue_size: int = 2
    ) -> None:
        self.source = source
        self.block_bytes = max(int(block_bytes), 1 << 16)
        # compressed bytes read, and decompressed bytes produced, at a time
        self.chunk_bytes = chunk_bytes or min(1 << 20, self.block_bytes // 4)
        self.compression = "unknown"
        self.bytes_in = 0
        self.bytes_out = 0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> BlockReader:
        self._thread = threading.Thread(target=self._produce, name=f"decode-{self.source.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a producer waiting on a full queue
                self._queue.get(timeout=0.05)
        self._thread = None

    def __iter__(self) -> Iterator[Block]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            self._decode_into_blocks()
        except IngestionError as err:
            self._put(err)
        except isal_zlib.error as err:
            self._put(IngestionError(f"{self.source.name}: corrupt gzip data ({err})"))
        except (OSError, EOFError) as err:
            self._put(IngestionError(f"{self.source.name}: cannot read the file ({err})"))
        except BaseException as err:  # pragma: no cover - re-raised in the consumer thread
            self._put(err)
        self._put(_END)

    def _decode_into_blocks(self) -> None:
        pending: list[bytes] = []
        pending_len = 0
        line_no = 1
        with self.source.open("rb") as handle:
            for out in self._decoded(handle):
                if self._stop.is_set():
                    return
                pending.append(out)
                pending_len += len(out)
                if pending_len < self.block_bytes:
                    continue
                # cut after the last newline, copying the data once (the join)
                k = len(pending) - 1
                while k >= 0 and (cut := pending[k].rfind(b"\n") + 1) == 0:
                    k -= 1
                if k < 0:  # a line longer than the block: keep reading until it ends
                    continue
                data = b"".join([*pending[:k], pending[k][:cut]])
                rest = [pending[k][cut:], *pending[k + 1 :]]
                if not self._put(Block(data, line_no, self.bytes_in)):
                    return
                line_no += _count_newlines(data)
                self.bytes_out += len(data)
                pending, pending_len = rest, pending_len - len(data)
        tail = b"".join(pending)
        if tail:
            self.bytes_out += len(tail)
            self._put(Block(tail, line_no, self.bytes_in))

    def _decoded(self, handle: Any) -> Iterator[bytes]:
        """Decompressed data in pieces of at most ``chunk_bytes`` (a highly compressible file stays bounded).

        Concatenated gzip members are one stream; input that ends inside a member is a truncated file.
        """
        chunk = handle.read(self.chunk_bytes)
        gzipped = chunk[:2] == GZIP_MAGIC
        self.compression = "gzip" if gzipped else "none"
        decoder = isal_zlib.decompressobj(wbits=31) if gzipped else None
        limit = self.chunk_bytes
        while chunk:
            self.bytes_in += len(chunk)
            if decoder is None:
                yield chunk
            else:
                data = chunk
                while True:
                    out = decoder.decompress(data, limit)
                    if out:
                        yield out
                    if decoder.eof:
                        data = decoder.unused_data
                        if not data:
                            break
                        decoder = isal_zlib.decompressobj(wbits=31)  # the next member
                        continue
                    data = decoder.unconsumed_tail
                    if not data and len(out) < limit:
                        break
            chunk = handle.read(self.chunk_bytes)
        if decoder is not None and not decoder.eof:
            raise IngestionError(
                f"{self.source.name}: truncated gzip file: the compressed stream ends before its end marker "
                f"(after {self.bytes_in:,} compressed bytes)"
            )


def _count_newlines(data: bytes) -> int:
    """Newlines in ``data`` (numpy's vectorised compare is about twice as fast as ``bytes.count``)."""
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 10))


def first_records(data: bytes, max_records: int) -> tuple[list[dict], int, bool]:
    """Parse up to ``max_records`` non-blank lines at the start of ``data`` for format detection.

    Returns the parsed objects, how many lines were tried, and whether Python-literal parsing was needed.
    """
    records: list[dict] = []
    tried = 0
    literal = False
    start = 0
    while tried < max_records and start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        line = data[start:end].strip()
        start = end + 1
        if not line:
            continue
        tried += 1
        obj, used_literal = _loads(line, allow_literal=True)
        if isinstance(obj, dict):
            records.append(obj)
            literal = literal or used_literal
    return records, tried, literal


def _loads(line: bytes, allow_literal: bool) -> tuple[Any, bool]:
    """Parse one line as JSON, else (2014 metadata) as a Python literal; ``None`` when it is neither."""
    try:
        return orjson.loads(line), False
    except orjson.JSONDecodeError:
        pass
    if allow_literal:
        try:
            return ast.literal_eval(line.decode("utf-8", errors="strict")), True
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError):
            pass
    return None, False


@dataclass
class ParseStats:
    """Per-file counters: non-blank lines seen, skipped lines by reason, the first bad line numbers."""

    max_examples: int = 10
    lines: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[tuple[int, str]] = field(default_factory=list)
    fallback_pieces: int = 0
    fallback_bytes: int = 0

    def bad(self, reason: str, line_numbers: Any, count: int | None = None) -> None:
        """Count ``count`` (default: all given) bad lines and remember the first few line numbers."""
        line_numbers = list(line_numbers)
        self.skipped[reason] += len(line_numbers) if count is None else count
        line_numbers = line_numbers[: self.max_examples]
        self.examples = sorted(self.examples + [(int(n), reason) for n in line_numbers])[: self.max_examples]

    @property
    def wants_examples(self) -> bool:
        """Whether more bad line numbers are still worth collecting (blocks arrive in file order)."""
        return len(self.examples) < self.max_examples

    @property
    def skipped_total(self) -> int:
        """All skipped lines."""
        return sum(self.skipped.values())


@dataclass
class Piece:
    """A parsed run of lines: an Arrow table with one row per non-blank line that parsed as an object."""

    table: pa.Table
    data: bytes
    first_line: int
    lines: np.ndarray | None = None  # file line number of each row, computed on demand

    def line_numbers(self) -> np.ndarray:
        """File line number of each row (blank and malformed lines have no row)."""
        if self.lines is None:
            numbers = [self.first_line + i for i, line in enumerate(self.data.split(b"\n")) if line.strip()]
            self.lines = np.asarray(numbers[: self.table.num_rows], dtype=np.int64)
        return self.lines


class BlockParser:
    """Parses blocks into Arrow tables of a fixed schema: Arrow first, a per-line parser as fallback.

    ``parse_all`` parses ``threads`` blocks at once (Arrow releases the GIL), each in one piece: on two cores
    that beats Arrow's own intra-block threading, which pays for splitting a block into chunks.
    """

    def __init__(
        self,
        schema: pa.Schema,
        stats: ParseStats,
        *,
        allow_literals: bool = False,
        arrow_first: bool = True,
        threads: int = 2,
        min_bisect_bytes: int = MIN_BISECT_BYTES,
    ) -> None:
        self.schema = schema
        self.stats = stats
        # the per-line parser also accepts Python dict literals (2014 metadata)
        self.allow_literals = allow_literals
        # False when the file is known to be Python literals: Arrow would only fail
        self.arrow_first = arrow_first
        self.threads = max(int(threads), 1)
        self.min_bisect_bytes = min_bisect_bytes
        self._parse_options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")

    def parse(self, block: Block) -> list[Piece]:
        """Parse one block; bad lines are counted in ``stats`` and left out of the returned pieces."""
        first_try = self._arrow(block.data) if self.arrow_first else None
        return self._settle(block.data, block.first_line, first_try)

    def parse_all(self, blocks: Iterable[Block]) -> Iterator[tuple[Block, list[Piece]]]:
        """Parse blocks in file order, ``threads`` of them concurrently; yields each block with its pieces."""
        if self.threads == 1 or not self.arrow_first:
            for block in blocks:
                yield block, self.parse(block)
            return
        with ThreadPoolExecutor(self.threads, thread_name_prefix="arrow-json") as pool:
            pending: deque[tuple[Block, Future]] = deque()
            for block in blocks:
                pending.append((block, pool.submit(self._arrow, block.data)))
                if len(pending) >= self.threads:
                    done, future = pending.popleft()
                    yield done, self._settle(done.data, done.first_line, future.result())
            while pending:
                done, future = pending.popleft()
                yield done, self._settle(done.data, done.first_line, future.result())

    def _arrow(self, data: bytes) -> pa.Table | pa.ArrowInvalid:
        """Arrow's parse of a whole piece, single-threaded (safe in a worker thread: touches no state)."""
        options = pj.ReadOptions(block_size=max(len(data) + 1, 1 << 16), use_threads=False)
        try:
            return pj.read_json(
                pa.BufferReader(data), read_options=options, parse_options=self._parse_options
            )
        except pa.ArrowInvalid as err:
            return err

    def _settle(self, data: bytes, first_line: int, result: pa.Table | pa.ArrowInvalid | None) -> list[Piece]:
        """Keep Arrow's table, or bisect the piece Arrow rejected down to small line-parsed pieces."""
        if isinstance(result, pa.Table):
            self.stats.lines += result.num_rows
            return [Piece(result, data, first_line)]
        if result is not None and "Empty JSON file" in str(result):
            return []
        if result is not None and len(data) > self.min_bisect_bytes:
            mid = data.rfind(b"\n", 0, len(data) // 2) + 1
            if 0 < mid < len(data):
                head, tail = data[:mid], data[mid:]
                tail_line = first_line + data.count(b"\n", 0, mid)
                return self._settle(head, first_line, self._arrow(head)) + self._settle(
                    tail, tail_line, self._arrow(tail)
                )
        return [self._parse_lines(data, first_line)]

    def _parse_lines(self, data: bytes, first_line: int) -> Piece:
        """Slow path: parse line by line, coercing types, skipping (with line numbers) what cannot be read."""
        self.stats.fallback_pieces += 1
        self.stats.fallback_bytes += len(data)
        names = self.schema.names
        types = [self.schema.field(n).type for n in names]
        columns: list[list[Any]] = [[] for _ in names]
        row_lines: list[int] = []
        malformed: list[int] = []
        bad_value: list[int] = []
        for offset, raw in enumerate(data.split(b"\n")):
            line = raw.strip()
            if not line:
                continue
            number = first_line + offset
            self.stats.lines += 1
            obj, _ = _loads(line, allow_literal=self.allow_literals)
            if not isinstance(obj, dict):
                malformed.append(number)
                continue
            try:
                values = [coerce(obj.get(n), t) for n, t in zip(names, types, strict=True)]
            except (TypeError, ValueError, OverflowError):
                bad_value.append(number)
                continue
            for column, value in zip(columns, values, strict=True):
                column.append(value)
            row_lines.append(number)
        if malformed:
            self.stats.bad("malformed", malformed)
        if bad_value:
            self.stats.bad("bad_value", bad_value)
        arrays = [pa.array(col, type=t) for col, t in zip(columns, types, strict=True)]
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        return Piece(table, data, first_line, np.asarray(row_lines, dtype=np.int64))


def coerce(value: Any, arrow_type: pa.DataType) -> Any:
    """Coerce one JSON value to ``arrow_type`` the way a lenient reader would; raises on impossible values."""
    if value is None:
        return None
    if pa.types.is_string(arrow_type):
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            raise TypeError("bool where a string is expected")
        if isinstance(value, int | float):
            return str(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return " ".join(value)
        raise TypeError(f"{type(value).__name__} where a string is expected")
    if pa.types.is_floating(arrow_type):
        if isinstance(value, bool):
            raise TypeError("bool where a number is expected")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return float(value.replace(",", "").strip())
        raise TypeError(f"{type(value).__name__} where a number is expected")
    if pa.types.is_integer(arrow_type):
        if isinstance(value, bool):
            raise TypeError("bool where an integer is expected")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.replace(",", "").strip()
            return int(text) if text.lstrip("-").isdigit() else _integral(float(text))
        raise TypeError(f"{type(value).__name__} where an integer is expected")
    if pa.types.is_list(arrow_type):
        inner = arrow_type.value_type
        if isinstance(value, str | dict) or not isinstance(value, list | tuple):
            value = [value]
        elif pa.types.is_list(inner) and not any(isinstance(v, list | tuple) for v in value):
            value = [value]  # a single path where a list of paths is expected
        out = []
        for element in value:
            try:
                coerced = coerce(element, inner)
            except (TypeError, ValueError, OverflowError):
                continue  # one odd element of a list does not spoil the record
            if coerced is not None:
                out.append(coerced)
        return out
    if pa.types.is_struct(arrow_type):
        if not isinstance(value, dict):
            raise TypeError(f"{type(value).__name__} where an object is expected")
        result = {}
        for sub in arrow_type:
            try:
                result[sub.name] = coerce(value.get(sub.name), sub.type)
            except (TypeError, ValueError, OverflowError):
                result[sub.name] = None
        return result
    raise TypeError(f"unsupported Arrow type {arrow_type}")  # pragma: no cover - schemas are fixed in code


def _integral(number: float) -> int:
    if not number.is_integer():
        raise ValueError(f"{number} is not an integer")
    return int(number)
