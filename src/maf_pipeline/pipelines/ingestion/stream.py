"""Streaming JSON-lines reading: gzip decoded in a background thread, Arrow parsing per block, line fallback.

Memory stays bounded by a few blocks whatever the file size: the decoder thread cuts the decompressed stream
into blocks of whole lines, Arrow parses each block with an explicit schema (only the wanted fields are
materialised), and a block that Arrow rejects is bisected so that only the pieces holding bad lines go through
the slow per-line parser.
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import logging
import queue
import re
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
UTF8_BOM = b"\xef\xbb\xbf"
# What the per-line parser does with a line whose read fields hold invalid UTF-8 (ingestion.invalid_utf8).
INVALID_UTF8_POLICIES = ("replace", "skip")
# Why a line is skipped: not JSON (nor a Python literal), a required field absent or empty, a value of the
# wrong type or out of range, invalid UTF-8 in an id (or in any read field with invalid_utf8: skip).
SKIP_REASONS = ("malformed", "missing_field", "bad_value", "bad_encoding")
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
        at_start = True
        with self.source.open("rb") as handle:
            for out in self._decoded(handle):
                if self._stop.is_set():
                    return
                if at_start and out:  # a UTF-8 byte order mark is not part of the first line
                    out = out.removeprefix(UTF8_BOM)
                    at_start = False
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
        if obj is None and not _is_utf8(line):  # a stray latin-1 byte does not hide the record's keys
            obj, used_literal = _loads(_escaped_utf8(line), allow_literal=True)
        if isinstance(obj, dict):
            records.append(obj)
            literal = literal or used_literal
    return records, tried, literal


# Invalid UTF-8 bytes are decoded to private-use code points U+10FF80..U+10FFFF (one per byte): unlike
# surrogates they survive orjson and ``ast.literal_eval``, and no real text holds them, so after parsing they
# show exactly which fields were damaged.
_ESCAPE_BASE = 0x10FF00
_ESCAPED = re.compile("[\U0010ff80-\U0010ffff]")


def _escape_invalid_bytes(err: UnicodeDecodeError) -> tuple[str, int]:
    bad = err.object[err.start : err.end]
    return "".join(chr(_ESCAPE_BASE + b) for b in bad), err.end


codecs.register_error("maf-escape-invalid-utf8", _escape_invalid_bytes)


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _escaped_utf8(line: bytes) -> bytes:
    """The line as valid UTF-8, each invalid byte turned into its private-use stand-in."""
    return line.decode("utf-8", errors="maf-escape-invalid-utf8").encode("utf-8")


def _has_escaped(value: Any) -> bool:
    """Whether a parsed value (string, list, dict) holds bytes that were not valid UTF-8."""
    if isinstance(value, str):
        return _ESCAPED.search(value) is not None
    if isinstance(value, list | tuple):
        return any(_has_escaped(v) for v in value)
    if isinstance(value, dict):
        return any(_has_escaped(v) for v in value.values())
    return False


def _replace_escaped(value: Any) -> Any:
    """The value with each invalid byte replaced by U+FFFD (what ``bytes.decode(errors="replace")`` gives)."""
    if isinstance(value, str):
        return _ESCAPED.sub("\ufffd", value)
    if isinstance(value, list | tuple):
        return [_replace_escaped(v) for v in value]
    if isinstance(value, dict):
        return {k: _replace_escaped(v) for k, v in value.items()}
    return value


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
    # lines kept after their invalid UTF-8 bytes were replaced by U+FFFD (ingestion.invalid_utf8: replace)
    repaired: int = 0
    repaired_examples: list[int] = field(default_factory=list)
    # skipped lines per reason and field at fault, and a few of the offending values (report, messages)
    fields: dict[str, Counter] = field(default_factory=dict)
    field_values: dict[str, list[Any]] = field(default_factory=dict)
    # records whose field was cut to its size bound (ingestion.metadata.max_*): a 52 MB description, ...
    capped: Counter = field(default_factory=Counter)
    # category labels dropped as not categories (ingestion.metadata.labels), per reason, and a few of them
    labels_dropped: Counter = field(default_factory=Counter)
    dropped_label_examples: dict[str, int] = field(default_factory=dict)

    def bad_field(self, reason: str, name: str, count: int, values: Iterable[Any] = ()) -> None:
        """Attribute ``count`` lines skipped for ``reason`` to field ``name``; keep a few of its values."""
        self.fields.setdefault(reason, Counter())[name] += count
        kept = self.field_values.setdefault(name, [])
        for value in values:
            if len(kept) >= 5:
                break
            kept.append(value)

    def bad(self, reason: str, line_numbers: Any, count: int | None = None) -> None:
        """Count ``count`` (default: all given) bad lines and remember the first few line numbers."""
        line_numbers = list(line_numbers)
        self.skipped[reason] += len(line_numbers) if count is None else count
        line_numbers = line_numbers[: self.max_examples]
        self.examples = sorted(self.examples + [(int(n), reason) for n in line_numbers])[: self.max_examples]

    def wants_example(self, line: int) -> bool:
        """Whether a bad line with this number would be among the first ``max_examples`` bad lines.

        Pieces do not report in strict line order (a block's line-parsed pieces count their bad lines before
        the block's Arrow pieces are checked), so this compares with the worst line kept so far.
        """
        if len(self.examples) < self.max_examples:
            return True
        return bool(self.examples) and line < self.examples[-1][0]

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
        id_fields: Iterable[str] = (),
        invalid_utf8: str = "replace",
    ) -> None:
        if invalid_utf8 not in INVALID_UTF8_POLICIES:
            raise ValueError(
                f"ingestion.invalid_utf8 must be one of {INVALID_UTF8_POLICIES}, got {invalid_utf8!r}"
            )
        self.schema = schema
        self.stats = stats
        # fields whose invalid UTF-8 always makes the line bad (an id with U+FFFD would merge distinct ids)
        self.id_fields = frozenset(id_fields)
        self.invalid_utf8 = invalid_utf8
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
        """Arrow's parse of a whole piece, single-threaded (safe in a worker thread: touches no state).

        Arrow's JSON reader does not check that strings are valid UTF-8; the full validation of the parsed
        columns does (about 2% of the parse time), and a piece that fails it goes the per-line way, which
        finds the lines and applies ``invalid_utf8``.
        """
        options = pj.ReadOptions(block_size=max(len(data) + 1, 1 << 16), use_threads=False)
        try:
            table = pj.read_json(
                pa.BufferReader(data), read_options=options, parse_options=self._parse_options
            )
            table.validate(full=True)
        except pa.ArrowInvalid as err:
            return err
        return table

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
        bad_encoding: list[int] = []
        for offset, raw in enumerate(data.split(b"\n")):
            line = raw.strip()
            if not line:
                continue
            line = line.removeprefix(UTF8_BOM)  # a BOM of a file concatenated into this one
            number = first_line + offset
            self.stats.lines += 1
            obj, _ = _loads(line, allow_literal=self.allow_literals)
            escaped = False
            if not isinstance(obj, dict) and not _is_utf8(line):
                obj, _ = _loads(_escaped_utf8(line), allow_literal=self.allow_literals)
                escaped = True
            if not isinstance(obj, dict):
                malformed.append(number)
                continue
            values = []
            for n, t in zip(names, types, strict=True):
                try:
                    values.append(coerce(obj.get(n), t))
                except (TypeError, ValueError, OverflowError):
                    self.stats.bad_field("bad_value", n, 1, [obj.get(n)])
                    break
            if len(values) < len(names):
                bad_value.append(number)
                continue
            if escaped:
                damaged = [n for n, v in zip(names, values, strict=True) if _has_escaped(v)]
                if damaged and (self.invalid_utf8 == "skip" or self.id_fields.intersection(damaged)):
                    bad_encoding.append(number)
                    for n in damaged:
                        self.stats.bad_field("bad_encoding", n, 1)
                    continue
                if damaged:
                    values = [_replace_escaped(v) for v in values]
                    self.stats.repaired += 1
                    if len(self.stats.repaired_examples) < self.stats.max_examples:
                        self.stats.repaired_examples.append(number)
            for column, value in zip(columns, values, strict=True):
                column.append(value)
            row_lines.append(number)
        if malformed:
            self.stats.bad("malformed", malformed)
        if bad_value:
            self.stats.bad("bad_value", bad_value)
        if bad_encoding:
            self.stats.bad("bad_encoding", bad_encoding)
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
