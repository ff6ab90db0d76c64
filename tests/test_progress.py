"""Long loops report progress: a tqdm bar on a terminal, periodic INFO lines in logs (CI, redirects)."""

from __future__ import annotations

import logging

import pytest

from maf_pipeline.progress import LogProgress, progress


def test_without_a_terminal_progress_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="maf_pipeline.progress")
    bar = progress(range(4), desc="images", unit="img", log_every_s=0)  # pytest captures stderr: no tty
    assert isinstance(bar, LogProgress)
    assert list(bar) == [0, 1, 2, 3]
    assert [r.getMessage().split(" [")[0] for r in caplog.records] == [
        "images: 1/4 (25%)", "images: 2/4 (50%)", "images: 3/4 (75%)", "images: 4/4 (100%)",
    ]  # fmt: skip


def test_lines_are_rate_limited_and_scale_bytes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="maf_pipeline.progress")
    with progress(
        total=3_000_000, unit="B", unit_scale=True, desc="reviews.json.gz", log_every_s=3600
    ) as bar:
        for _ in range(100):
            bar.update(30_000)
    assert bar.n == 3_000_000 and not caplog.records  # nothing before log_every_s has passed
    with progress(total=3_000_000, unit="B", unit_scale=True, desc="reviews.json.gz", log_every_s=0) as bar:
        bar.update(1_500_000)
    assert caplog.records[-1].getMessage().startswith("reviews.json.gz: 1.50M/3.00M (50%)")
    with progress(desc="stream", log_every_s=0) as bar:  # unknown total
        bar.update(7)
    assert caplog.records[-1].getMessage().startswith("stream: 7 [")
