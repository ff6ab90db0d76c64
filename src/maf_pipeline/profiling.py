"""Where a run spends its time: a hook that profiles every node (wall, CPU, peak RSS, rows and bytes out).

``RunProfileHook`` records, for each node of a ``kedro run``: wall seconds from its first input load to its
last output save (split into load, run and save), CPU seconds of the process (all threads), the peak
resident memory meanwhile (sampled by a background thread), rows in and out, and the size on disk of what
it saved. At the end it saves the ``run_profile`` catalog dataset (``data/08_reporting/run_profile.json``),
and while an MLflow run is active it logs the same figures as metrics (``profile.<node>.wall_s``, ...), so
every user sees which stage is slow or large. Image transfers are reported separately (the ``images``
section, from ``image_acquisition_report``): they depend on the network, not on this code.
"""

from __future__ import annotations

import logging
import resource
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import psutil
from kedro.framework.hooks import hook_impl

from maf_pipeline.distributed import launch_rank
from maf_pipeline.hooks import _local_path, metric_key

logger = logging.getLogger(__name__)

MB = 1 << 20


def table_rows(data: Any) -> int | None:
    """Rows of a table-like value (pandas, Arrow, a feature table dict, anything with a shape); else None."""
    if isinstance(data, dict) and "features" in data:
        data = data["features"]
    shape = getattr(data, "shape", None)
    if shape is not None and len(shape) >= 1 and not isinstance(data, int | float):
        return int(shape[0])
    rows = getattr(data, "num_rows", None)
    return int(rows) if isinstance(rows, int) else None


class _PeakRss:
    """Background sampler of this process's RSS; ``reset`` starts a new window, ``peak`` is its maximum."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._process = psutil.Process()
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def rss(self) -> int:
        return int(self._process.memory_info().rss)

    def start(self) -> None:
        self._peak = self.rss()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def reset(self) -> int:
        now = self.rss()
        self._peak = now
        return now

    def peak(self) -> int:
        self._peak = max(self._peak, self.rss())
        return self._peak

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self._peak = max(self._peak, self.rss())
            except psutil.Error:  # pragma: no cover - the process is ending
                return


def process_peak_rss() -> int:
    """High-water mark of this process's RSS in bytes (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class RunProfileHook:
    """Profiles every node of a run; saves ``run_profile`` and logs MLflow metrics when a run is active."""

    def __init__(
        self,
        dataset: str = "run_profile",
        sample_every_s: float = 0.05,
        sections: dict[str, str] | None = None,
    ) -> None:
        self.dataset = dataset
        self.sample_every_s = sample_every_s
        # outputs copied whole into the profile under a section name
        self.sections = {"image_acquisition_report": "images"} if sections is None else sections
        self._catalog: Any = None
        self._reset()

    def _reset(self) -> None:
        self._nodes: list[dict[str, Any]] = []
        self._open: dict[str, dict[str, Any]] = {}
        self._bytes: dict[str, int] = {}
        self._extra: dict[str, Any] = {}
        self._sampler: _PeakRss | None = None
        self._started = (0.0, 0.0)

    @hook_impl
    def after_catalog_created(self, catalog: Any) -> None:
        """Keep the catalog: the profile is saved through it, and saved files are found through it."""
        self._catalog = catalog

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        """Start the clock and the RSS sampler."""
        self._reset()
        self._run_params = {k: run_params.get(k) for k in ("pipeline_name", "env", "from_nodes", "to_nodes")}
        self._started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self._started = (time.perf_counter(), time.process_time())
        self._sampler = _PeakRss(self.sample_every_s)
        self._sampler.start()

    def _record(self, node: Any) -> dict[str, Any]:
        """The open record of ``node``, opened on its first input load (so loading is part of the node)."""
        rec = self._open.get(node.name)
        if rec is None:
            rss = self._sampler.reset() if self._sampler else 0
            now = time.perf_counter()
            rec = self._open[node.name] = {
                "node": node,
                "start": now,
                "cpu": time.process_time(),
                "rss_start": rss,
                "run_start": now,
                "run_end": now,
                "saved": 0,
                "row": {"node": node.name},
            }
        return rec

    @hook_impl
    def before_dataset_loaded(self, dataset_name: str, node: Any) -> None:
        """Open the node's record before its first input is read."""
        self._record(node)

    @hook_impl
    def before_node_run(self, node: Any, inputs: dict[str, Any]) -> None:
        """Inputs are loaded: the function starts now; count the rows of its table inputs."""
        rec = self._record(node)
        rec["run_start"] = time.perf_counter()
        rec["row"]["rows_in"] = _sum_rows(inputs)

    @hook_impl
    def after_node_run(self, node: Any, outputs: dict[str, Any]) -> None:
        """The function returned; outputs are saved next (a node without outputs is done)."""
        rec = self._record(node)
        rec["run_end"] = time.perf_counter()
        rec["row"]["rows_out"] = _sum_rows(outputs)
        rec["row"]["outputs"] = {name: {"rows": table_rows(data)} for name, data in outputs.items()}
        for name, section in self.sections.items():
            if isinstance(outputs.get(name), dict):
                self._extra[section] = outputs[name]
        if not node.outputs:
            self._close(node.name)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, node: Any) -> None:
        """Size on disk of each saved output (a file, or a folder's files); the last one closes the node."""
        dataset = self._catalog.get(dataset_name) if self._catalog is not None else None
        path = _local_path(dataset) if dataset is not None else None
        if path is not None and path.exists():
            files = path.rglob("*") if path.is_dir() else [path]
            self._bytes[dataset_name] = sum(p.stat().st_size for p in files if p.is_file())
        rec = self._open.get(node.name)
        if rec is not None:
            rec["saved"] += 1
            if rec["saved"] >= len(node.outputs):
                self._close(node.name)

    def _close(self, name: str) -> None:
        """Finish the node's row (load, run and save seconds, CPU, peak RSS) and log it to MLflow."""
        rec = self._open.pop(name)
        now = time.perf_counter()
        peak = self._sampler.peak() if self._sampler else 0
        row = rec["row"]
        row.update(
            wall_s=round(now - rec["start"], 3),
            load_s=round(rec["run_start"] - rec["start"], 3),
            run_s=round(rec["run_end"] - rec["run_start"], 3),
            save_s=round(now - rec["run_end"], 3),
            cpu_s=round(time.process_time() - rec["cpu"], 3),
            peak_rss_mb=round(peak / MB, 1),
            rss_start_mb=round(rec["rss_start"] / MB, 1),
        )
        for out, info in row.get("outputs", {}).items():
            info["bytes"] = self._bytes.get(out)
        row["output_bytes"] = sum(i["bytes"] or 0 for i in row.get("outputs", {}).values()) or None
        self._nodes.append(row)
        keys = ("wall_s", "cpu_s", "peak_rss_mb", "rows_out", "output_bytes")
        metrics = {metric_key("profile", name, k): float(row[k]) for k in keys if row.get(k) is not None}
        if not _log_metrics(metrics):  # kept in the run profile instead, never lost silently
            self._extra.setdefault("mlflow_unlogged_metrics", {}).update(metrics)

    @hook_impl
    def after_pipeline_run(self) -> None:
        """Save the profile of a finished run."""
        self._finish("completed")

    @hook_impl
    def on_pipeline_error(self) -> None:
        """Save the profile of the nodes that ran before a failure (it shows where the run was)."""
        self._finish("failed")

    def profile(self, status: str) -> dict[str, Any]:
        """The run's profile as a JSON-able dict."""
        wall0, cpu0 = self._started
        return {
            "status": status,
            "started": getattr(self, "_started_at", None),
            "run": getattr(self, "_run_params", {}),
            "wall_s": round(time.perf_counter() - wall0, 3),
            "cpu_s": round(time.process_time() - cpu0, 3),
            "process_peak_rss_mb": round(process_peak_rss() / MB, 1),
            "nodes": self._nodes,
            **self._extra,
        }

    def _finish(self, status: str) -> None:
        if self._sampler is None:
            return
        self._sampler.stop()
        profile = self.profile(status)
        self._sampler = None
        if self._catalog is None or self.dataset not in self._catalog or launch_rank() > 0:
            return  # under torchrun only rank 0 writes, like every other output
        try:
            self._catalog.save(self.dataset, profile)
        except Exception:  # profiling must never fail a run
            logger.warning("could not save the run profile", exc_info=True)
            return
        slowest = sorted(profile["nodes"], key=lambda r: -r["wall_s"])[:3]
        logger.info(
            "Run profile (%s): %.1f s wall, peak RSS %.0f MB; slowest nodes: %s",
            self.dataset,
            profile["wall_s"],
            profile["process_peak_rss_mb"],
            ", ".join(f"{r['node']} {r['wall_s']:.1f} s" for r in slowest),
        )


def _sum_rows(values: dict[str, Any]) -> int | None:
    counts = [table_rows(v) for k, v in values.items() if not k.startswith("params:")]
    counts = [c for c in counts if c is not None]
    return sum(counts) if counts else None


def _log_metrics(metrics: dict[str, float]) -> bool:
    """Log to the active MLflow run (its store waits ``run.mlflow_busy_timeout_s`` for a lock); False when
    that failed: the caller keeps the metrics in the run profile and this says so."""
    if not metrics:
        return True
    try:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_metrics(metrics)
        return True
    except Exception as error:  # tracking must never fail a run
        logger.warning(
            "could not log %d node profile metrics to MLflow (%s: %s); they are kept in the run profile "
            "under mlflow_unlogged_metrics",
            len(metrics), type(error).__name__, str(error).splitlines()[0][:200],
        )  # fmt: skip
        return False
