"""Progress of long loops: a tqdm bar on a terminal, and an INFO log line every ``log_every_s`` seconds
otherwise (CI logs, ``kedro run > log``), so a silent hour-long node never looks hung."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

LOG_EVERY_S = 30.0


class LogProgress:
    """The part of tqdm's interface the project uses (iterate, ``update``, context manager), writing log
    lines instead of a bar."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        desc: str = "",
        total: float | None = None,
        unit: str = "it",
        unit_scale: bool = False,
        log_every_s: float = LOG_EVERY_S,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.total = iterable, desc, total
        self.unit, self.unit_scale, self.log_every_s = unit, unit_scale, float(log_every_s)
        self.n = 0
        self.start = self.last = time.perf_counter()

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units; log a line when ``log_every_s`` seconds passed since the last one."""
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.log_every_s:
            self.last = now
            logger.info(self.line(now - self.start))

    def line(self, elapsed: float) -> str:
        """``desc: n/total (pct) [elapsed<remaining, rate]`` as tqdm formats it."""
        fmt = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}]"
        if not self.total:
            fmt = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}]"
        return tqdm.format_meter(
            self.n, self.total, elapsed, prefix=self.desc, unit=self.unit, unit_scale=self.unit_scale,
            bar_format=fmt,
        )  # fmt: skip

    def close(self) -> None:
        """Nothing to tear down (the caller logs its own summary)."""


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str = "",
    total: float | None = None,
    unit: str = "it",
    unit_scale: bool = False,
    log_every_s: float = LOG_EVERY_S,
    **tqdm_kwargs: Any,
) -> Any:
    """``tqdm(...)`` on a terminal (``disable=None`` semantics), else a :class:`LogProgress` logging every
    ``log_every_s`` seconds. Use it like tqdm: ``for x in progress(xs, desc=...)``, ``with progress(...)``."""
    tqdm_kwargs.pop("disable", None)
    bar = tqdm(
        iterable, desc=desc, total=total, unit=unit, unit_scale=unit_scale, disable=None, **tqdm_kwargs
    )
    if not bar.disable:
        return bar
    return LogProgress(iterable, desc, total, unit, unit_scale, log_every_s)
