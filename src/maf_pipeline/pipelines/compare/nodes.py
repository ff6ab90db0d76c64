"""Compare nodes: train models and MAF variants over a list of seeds with the shared training/evaluation code.

Every run goes through :func:`maf_pipeline.training.train_on` (same windows, early
stopping, checkpoints) and :func:`maf_pipeline.pipelines.evaluation.nodes.evaluate_scorer` (same split,
protocols and tie rule), so the comparison differs only in the model. A node returns its runs in long form,
one row per (variant, seed, protocol, split, metric); the reporting nodes aggregate them over seeds.

The independent trainings of a node (its seeds, variants, grid points) run concurrently when
``compare.parallel.workers`` allows: a ``concurrent.futures.ProcessPoolExecutor`` with the ``spawn`` start
method, one worker per slot of ``runs_per_gpu`` x visible GPUs (each worker pinned to one GPU), the node's
data sent once per worker (feature tensors through shared memory). Every run seeds itself, so the rows equal
the sequential run's for the same seeds (only ``train_seconds`` differs).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pandas as pd
import torch
import torch.multiprocessing as torch_mp

from maf_pipeline.model_inputs import ModelInputs
from maf_pipeline.models import MODELS, Popularity, empty_modalities, feature_tables, model_from_artifact
from maf_pipeline.pipelines.evaluation.nodes import evaluate_scorer
from maf_pipeline.training import train_on

logger = logging.getLogger(__name__)

RUN_COLUMNS = [
    "variant",
    "architecture",
    "seed",
    "protocol",
    "split",
    "metric",
    "value",
    "best_epoch",
    "epochs_run",
    "train_seconds",
    "config",
]


GRID_SETTINGS = ("enabled", "d_mm", "mtl_lambda", "fusion", "seeds", "metric", "fixed")


def deep_merge(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` updated by ``override``, nested dicts merged key by key (so ``early_stopping.patience`` alone
    can be overridden)."""
    out = dict(base)
    for key, value in (override or {}).items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def empty_runs() -> pd.DataFrame:
    """A runs table with no rows (a skipped model or experiment)."""
    return pd.DataFrame({c: pd.Series(dtype="float64" if c == "value" else "object") for c in RUN_COLUMNS})


class RunContext:
    """The shared inputs of every run: sequences, feature tables, merged training/evaluation settings."""

    def __init__(
        self,
        inputs: ModelInputs,
        compare_params: dict[str, Any],
        training_params: dict[str, Any],
        evaluation_params: dict[str, Any],
        max_len: int,
        seed: int,
    ) -> None:
        self.inputs, self.max_len, self.eval_seed = inputs, int(max_len), int(seed)
        self.training = deep_merge(training_params, compare_params["training"])
        self.evaluation = deep_merge(evaluation_params, compare_params["evaluation"])
        self.protocols = list(compare_params["protocols"])
        self.num_items = inputs.num_items
        self.tables = feature_tables(*inputs.features)
        self.present = [m for m in ("image", "text", "category") if m in self.tables]
        self.present = [m for m in self.present if m not in empty_modalities(self.tables)]
        self.histories: list[dict[str, Any]] = []  # per-run training histories (validation curves), in order

    def evaluate(self, scorer: torch.nn.Module, max_len: int) -> list[dict[str, Any]]:
        """Rows ``(protocol, split, metric, value)`` per configured protocol (negatives: the global seed)."""
        rows = []
        for protocol in self.protocols:
            metrics, _ = evaluate_scorer(
                scorer, self.num_items, max_len, self.inputs.train_sequences, self.inputs.valid_sequences,
                self.inputs.test_sequences, {**self.evaluation, "protocol": protocol}, self.eval_seed,
            )  # fmt: skip
            for split in ("valid", "test"):
                rows.extend(
                    {"protocol": protocol, "split": split, "metric": name, "value": float(value)}
                    for name, value in metrics[split].items()
                    if name != "num_users"
                )
        return rows

    def train_and_evaluate(
        self, variant: str, model_params: dict[str, Any], seed: int, training: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Train one model with one seed through the training node, evaluate it, and label the rows."""
        artifact, history = train_on(self.inputs, model_params, training or self.training, self.max_len, seed)
        model = model_from_artifact(artifact, self.tables)
        self.histories.append({"variant": variant, "seed": int(seed), "config": model_params, **history})
        info = {
            "variant": variant,
            "architecture": model_params["architecture"],
            "seed": int(seed),
            "best_epoch": history["best_epoch"],
            "epochs_run": len(history["epochs"]),
            "train_seconds": round(float(history["total_seconds"]), 2),
            "config": _config_text(model_params),
        }
        return [{**info, **row} for row in self.evaluate(model, self.max_len)]

    def run_all(
        self, tasks: list[tuple[str, dict[str, Any], int, dict[str, Any]]], parallel: dict[str, Any]
    ) -> list[list[dict[str, Any]]]:
        """Rows of each ``(variant, model_params, seed, training)`` task, in order; concurrently in worker
        processes when ``parallel`` (``compare.parallel``) resolves to more than one worker."""
        devices = worker_devices(parallel, len(tasks))
        if len(devices) <= 1:
            return [self.train_and_evaluate(*task) for task in tasks]
        threads = max(1, (os.cpu_count() or 1) // len(devices))
        slots = torch_mp.get_context("spawn").SimpleQueue()
        for device in devices:
            slots.put(device)
        logger.info("compare: %d runs on %d worker processes (%s)", len(tasks), len(devices), devices)
        state = (self.inputs, self.training, self.evaluation, self.protocols, self.max_len, self.eval_seed)
        with ProcessPoolExecutor(
            max_workers=len(devices),
            mp_context=torch_mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(state, slots, threads),
        ) as pool:
            return list(pool.map(_run_task, tasks))

    def missing_modalities(self, model_params: dict[str, Any]) -> bool:
        """Whether a feature-based model would be left without any modality on this data set."""
        cls = MODELS[model_params["architecture"]]
        if not cls.feature_names or model_params["architecture"] == "maf":
            return False  # MAF without modalities is SASRec: still a valid run
        wanted = model_params["modalities"]
        return not any(m in self.present for m in wanted)


def worker_devices(parallel: dict[str, Any], num_tasks: int) -> list[str]:
    """One device name per worker process: ``runs_per_gpu`` slots per visible GPU for ``workers: auto``
    (a single slot, i.e. sequential in-process, without a GPU), or ``workers: n`` slots spread over the GPUs
    (CPU when there is none); never more than ``num_tasks``."""
    workers = parallel["workers"]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if workers in (None, "auto"):
        count = gpus * max(1, int(parallel["runs_per_gpu"])) if gpus else 1
    else:
        count = int(workers)
        if count < 1:
            raise ValueError(f"compare.parallel.workers must be >= 1 or auto, got {workers!r}")
    count = max(1, min(count, num_tasks))
    return [f"cuda:{i % gpus}" if gpus else "cpu" for i in range(count)]


_WORKER: dict[str, Any] = {}


def _init_worker(state: tuple, slots: Any, threads: int) -> None:
    """Worker start: rebuild the run context once and take a device slot (its GPU for all its runs)."""
    inputs, training, evaluation, protocols, max_len, seed = state
    device = slots.get()
    training, evaluation = {**training, "device": device}, {**evaluation, "device": device}
    compare = {"training": {}, "evaluation": {}, "protocols": protocols}
    ctx = RunContext(inputs, compare, training, evaluation, max_len, seed)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    torch.set_num_threads(int(training["num_threads"] or threads))
    _WORKER.update(ctx=ctx, device=device)


def _run_task(task: tuple[str, dict[str, Any], int, dict[str, Any]]) -> list[dict[str, Any]]:
    ctx: RunContext = _WORKER["ctx"]
    variant, model_params, seed, training = task
    return ctx.train_and_evaluate(variant, model_params, seed, {**training, "device": _WORKER["device"]})


def _config_text(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(config.items()) if k != "architecture")


def _frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return empty_runs()
    return frame.reindex(columns=RUN_COLUMNS)


def _seeds(compare_params: dict[str, Any]) -> list[int]:
    seeds = [int(s) for s in compare_params["seeds"]]
    if not seeds:
        raise ValueError("compare.seeds must list at least one seed")
    return seeds


def run_popularity(
    train_sequences: pd.DataFrame,
    valid_sequences: pd.DataFrame,
    test_sequences: pd.DataFrame,
    item_index: pd.DataFrame,
    compare_params: dict[str, Any],
    evaluation_params: dict[str, Any],
    seed: int,
) -> pd.DataFrame:
    """The popularity floor under every configured protocol (deterministic: one run, not one per seed)."""
    if "pop" not in compare_params["models"]:
        logger.info("compare: pop not selected (compare.models)")
        return empty_runs()
    inputs = ModelInputs(train_sequences, valid_sequences, item_index, test_sequences)  # no features
    ctx = RunContext(inputs, compare_params, {}, evaluation_params, 1, seed)
    pop = Popularity.from_sequences(list(train_sequences["items"]), ctx.num_items)
    info = {"variant": "pop", "architecture": "pop", "seed": None, "config": "training counts"}
    return _frame({**info, **row} for row in ctx.evaluate(pop, 1))


def run_model(
    model_inputs: ModelInputs,
    model_params: dict[str, Any],
    compare_params: dict[str, Any],
    training_params: dict[str, Any],
    evaluation_params: dict[str, Any],
    max_len: int,
    seed: int,
    name: str,
) -> pd.DataFrame:
    """Train and evaluate model ``name`` (its ``params:<name>.model`` block) once per ``compare.seeds`` seed.

    ``compare.model_training.<name>`` overrides the training settings of this model only (e.g. a longer
    patience for BERT4Rec's noisy Cloze validation curve). A model not in ``compare.models`` is skipped (empty
    table), and so is a feature-based baseline when the data set has none of its modalities.
    """
    if name not in compare_params["models"]:
        logger.info("compare: %s not selected (compare.models)", name)
        return empty_runs()
    ctx = RunContext(model_inputs, compare_params, training_params, evaluation_params, max_len, seed)
    if ctx.missing_modalities(model_params):
        logger.warning("compare: %s skipped: none of its modalities has features on this data set", name)
        return empty_runs()
    seeds = _seeds(compare_params)
    training = deep_merge(ctx.training, compare_params["model_training"].get(name))
    started = time.perf_counter()
    results = ctx.run_all([(name, model_params, s, training) for s in seeds], compare_params["parallel"])
    logger.info("compare: %s, %d seeds done in %.1f s", name, len(seeds), time.perf_counter() - started)
    return _frame(row for rows in results for row in rows)


def resolve_maf_config(maf_params: dict[str, Any], grid_selection: dict[str, Any]) -> dict[str, Any]:
    """The MAF block of every comparison: ``params:maf.model`` updated by the grid-search choice, if any."""
    best = (grid_selection or {}).get("best") or {}
    if best:
        logger.info("compare: MAF uses the grid-search choice %s (selected on validation)", best)
    return {**maf_params, **best}


def run_maf_variants(
    model_inputs: ModelInputs,
    maf_config: dict[str, Any],
    maf_runs: pd.DataFrame,
    variants: dict[str, dict[str, Any]] | None,
    compare_params: dict[str, Any],
    training_params: dict[str, Any],
    evaluation_params: dict[str, Any],
    max_len: int,
    seed: int,
) -> pd.DataFrame:
    """Train each MAF variant (label -> overrides of the MAF block) over the seeds; one family per experiment.

    A variant equal to the MAF block itself (e.g. ``Sum`` when MAF uses sum) reuses the Table 2 MAF runs when
    they cover the same seeds, so the reference model is trained once for all tables.
    """
    if not variants:
        return empty_runs()
    ctx = RunContext(model_inputs, compare_params, training_params, evaluation_params, max_len, seed)
    training = deep_merge(ctx.training, compare_params["model_training"].get("maf"))
    seeds = _seeds(compare_params)
    reusable = (
        not maf_runs.empty
        and set(maf_runs["seed"].dropna().astype(int)) == set(seeds)
        and set(maf_runs["protocol"]) == set(ctx.protocols)
    )
    frames: list[pd.DataFrame | None] = []
    tasks = []
    for label, overrides in variants.items():
        config = {**maf_config, **(overrides or {})}
        wanted = config["modalities"]
        if wanted and not any(m in ctx.present for m in wanted):
            logger.warning("compare: variant %r skipped: no features for %s on this data set", label, wanted)
            continue
        if config == maf_config and reusable:
            logger.info("compare: variant %r is the MAF of Table 2: reusing its runs", label)
            frames.append(maf_runs.assign(variant=label))
            continue
        frames.append(None)  # filled below, in order
        tasks.extend((label, config, s, training) for s in seeds)
    results = iter(ctx.run_all(tasks, compare_params["parallel"]))
    frames = [
        frame if frame is not None else _frame(r for _ in seeds for r in next(results)) for frame in frames
    ]
    return pd.concat(frames, ignore_index=True) if frames else empty_runs()


def grid_axes(grid: dict[str, Any]) -> dict[str, list[Any]]:
    """The grid's axes: the paper's (d', lambda, F) first, then any other list of MAF-block values."""
    names = [k for k in ("d_mm", "mtl_lambda", "fusion") if grid[k]]
    names += [k for k, v in grid.items() if k not in (*names, *GRID_SETTINGS) and isinstance(v, list) and v]
    return {k: list(grid[k]) for k in names}


def grid_tasks(
    axes: dict[str, list[Any]], maf_params: dict[str, Any], fixed: dict[str, Any], seeds: list[int],
    training: dict[str, Any],
) -> tuple[list[tuple], list[dict[str, Any]]]:  # fmt: skip
    """One run per valid grid point and seed (points with d' > d or d' not divisible by the heads are
    skipped with a warning), and each run's ``grid_<axis>`` labels."""
    tasks, labels = [], []
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values, strict=True))
        config = {**maf_params, **fixed, **point}
        d_mm, d, heads = int(config["d_mm"]), int(config["d"]), int(config["n_heads"])
        if d_mm > d or d_mm % heads:
            logger.warning(
                "grid: skipping %s (d'=%d must be <= d=%d and divisible by %d heads)", point, d_mm, d, heads
            )
            continue
        label = ", ".join(f"{k}={v}" for k, v in point.items())
        for s in seeds:
            tasks.append((label, config, s, training))
            labels.append({f"grid_{k}": v for k, v in point.items()})
    return tasks, labels


def select_grid_point(
    runs: pd.DataFrame, axes: dict[str, list[Any]], fixed: dict[str, Any], metric: str, protocol: str,
    seeds: list[int],
) -> dict[str, Any]:  # fmt: skip
    """The point with the best mean *validation* ``metric`` (test is recorded, never used), with ``fixed``."""
    valid = runs[(runs["split"] == "valid") & (runs["protocol"] == protocol) & (runs["metric"] == metric)]
    scores = valid.groupby("variant")["value"].mean()
    best_row = runs[runs["variant"] == scores.idxmax()].iloc[0]
    return {
        "enabled": True,
        "metric": metric,
        "split": "valid",
        "protocol": protocol,
        "seeds": seeds,
        "best": {**fixed, **{k: _plain(best_row[f"grid_{k}"]) for k in axes}},
        "best_valid": float(scores.max()),
        "scores": {k: float(v) for k, v in scores.sort_values(ascending=False).items()},
    }


def run_grid_search(
    model_inputs: ModelInputs,
    maf_params: dict[str, Any],
    grid_params: dict[str, Any],
    compare_params: dict[str, Any],
    training_params: dict[str, Any],
    evaluation_params: dict[str, Any],
    max_len: int,
    seed: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Paper section 4.2's grid over d', lambda and F (when ``compare.grid.enabled``), selected on validation.

    Any other list in ``grid`` is one more axis over that key of the MAF block (``scale: [head, model]``,
    ``mm_dropout: [0.0, 0.2]``, ...), so the model's levers are tuned by the same code.

    ``grid.fixed`` overrides the MAF block at every point (e.g. ``mtl_normalize: none``: the paper's lambda
    grid is for raw multitask losses). Every point is trained for each of ``grid.seeds`` and scored by the
    mean *validation* ``grid.metric`` under the first protocol; test metrics are recorded, never used. Points
    invalid for the MAF block (d' > d or d' not divisible by the heads) are skipped with a warning. Returns
    the runs and the selection (the best point, with ``fixed``).
    """
    grid = grid_params
    if not grid["enabled"]:
        return empty_runs(), {"enabled": False, "best": {}}
    axes = grid_axes(grid)
    metric = grid["metric"]
    seeds = [int(s) for s in grid["seeds"] or _seeds(compare_params)]
    ctx = RunContext(model_inputs, compare_params, training_params, evaluation_params, max_len, seed)
    training = deep_merge(ctx.training, compare_params["model_training"].get("maf"))
    fixed = dict(grid["fixed"])
    tasks, labels = grid_tasks(axes, maf_params, fixed, seeds, training)
    logger.info("grid: %d points x %d seeds", len(tasks) // max(len(seeds), 1), len(seeds))
    results = ctx.run_all(tasks, compare_params["parallel"])
    rows = [{**r, **extra} for extra, result in zip(labels, results, strict=True) for r in result]
    runs = pd.DataFrame(rows)
    if runs.empty:
        raise ValueError(
            "compare.grid: no valid grid point (check d_mm against the MAF block's d and n_heads)"
        )
    selection = select_grid_point(runs, axes, fixed, metric, ctx.protocols[0], seeds)
    logger.info("grid: best %s with valid %s %.4f", selection["best"], metric, selection["best_valid"])
    return runs, selection


def _plain(value: Any) -> Any:
    """numpy scalars to Python (JSON-friendly)."""
    return value.item() if hasattr(value, "item") else value
