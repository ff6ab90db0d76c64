"""Training and evaluation throughput of SASRec and MAF at the paper's scale (and a 1M-item catalog).

Not a test. Generates sequences at a given size, trains each model for a few epochs with the project's own
trainer (``training.nodes.fit``: host-prepared batches, pinned copies, chunked or sampled loss, bf16
autocast, optional ``torch.compile``) and reports, for the last epoch:

* training: windows (sequences) per second, seconds per epoch, achieved TFLOP/s (model FLOPs of the real
  target positions, forward + backward = 3x forward) against the device's peak for that precision;
* evaluation: seconds for the full-ranking validation of all users (every item scored, pessimistic ties);
* peak device memory, and validation NDCG@20 (the sequences are learnable, so precisions can be compared).

Sizes: ``cpu`` (small, runs anywhere in about a minute), ``women`` (the paper's Clothing-Women: 105,558
users, 122,701 items, 810,245 interactions; d=256, 4 layers, 8 heads) and ``1m`` (200,000 users, a
1,000,000-item catalog, 2M interactions, same model; feature tables stored in bf16). MAF uses sum fusion and
all three modalities with 4096-d image, 768-d text and 1000-d category tables (random features; only their
sizes matter for speed). Sequence lengths follow an Amazon 5-core shape: at least 5, a long log-normal tail,
mean matched to the size (7.68 for ``women``). Each user's next item follows its own stride through the
catalog with probability 0.6, else a Zipf-popular item, so validation metrics rise with training.

Run::

    .venv/bin/python benchmarks/bench_training.py --size cpu
    python3 benchmarks/bench_training.py --size women --precision fp32,bf16     # on a GPU
    python3 benchmarks/bench_training.py --size 1m --precision bf16 --epochs 1

Peaks: measured here by a large matmul in the run's precision (the card's practical ceiling), with the
datasheet's dense figure printed beside it for known GPUs.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from maf_pipeline.models import build_model
from maf_pipeline.training import fit, seed_everything, training_windows

logger = logging.getLogger("bench_training")

SIZES: dict[str, dict[str, Any]] = {
    "cpu": {"users": 3000, "items": 8000, "interactions": 23040, "d": 64, "n_layers": 2, "n_heads": 2,
            "d_ff": 256, "d_mm": 32},
    "women": {"users": 105558, "items": 122701, "interactions": 810245, "d": 256, "n_layers": 4, "n_heads": 8,
              "d_ff": 256, "d_mm": 64},
    "1m": {"users": 200000, "items": 1000000, "interactions": 2000000, "d": 256, "n_layers": 4, "n_heads": 8,
           "d_ff": 256, "d_mm": 64, "feature_dtype": "bf16"},
}  # fmt: skip
FEATURE_DIMS = {"image": 4096, "text": 768, "category": 1000}
# Dense datasheet peaks (TFLOP/s) by precision, for orientation beside the measured matmul ceiling.
DATASHEET = {"H200": {"bf16": 989.0, "fp32": 67.0}, "H100": {"bf16": 989.0, "fp32": 67.0},
             "A100": {"bf16": 312.0, "fp32": 19.5}}  # fmt: skip


def make_sequences(users: int, items: int, interactions: int, seed: int) -> list[np.ndarray]:
    """Per-user item sequences (ids 1..items) with an Amazon 5-core length shape and learnable strides."""
    rng = np.random.default_rng(seed)
    extra = interactions - 5 * users
    tail = rng.lognormal(mean=0.0, sigma=1.2, size=users)
    lengths = 5 + np.floor(tail * extra / tail.sum()).astype(np.int64)
    lengths = np.minimum(lengths, 1000)
    short = interactions - int(lengths.sum())  # spread the rounding remainder over random users
    if short > 0:
        np.add.at(lengths, rng.choice(users, size=short, replace=True), 1)
    ranks = np.arange(1, items + 1, dtype=np.float64)
    cdf = np.cumsum(1.0 / (ranks + 10.0) ** 0.9)
    cdf /= cdf[-1]
    perm = rng.permutation(items) + 1  # popular ids spread over the catalog

    def popular(n: int) -> np.ndarray:
        return perm[np.minimum(np.searchsorted(cdf, rng.random(n)), items - 1)]

    by_length = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[by_length]
    stride = rng.integers(1, 8, size=users)
    seqs = np.zeros((users, int(lengths.max())), dtype=np.int64)
    seqs[:, 0] = popular(users)
    for t in range(1, seqs.shape[1]):
        k = int(np.searchsorted(-sorted_len, -t, side="left"))  # users longer than t come first
        alive = by_length[:k]
        follow = rng.random(k) < 0.6
        nxt = (seqs[alive, t - 1] - 1 + stride[alive]) % items + 1
        seqs[alive, t] = np.where(follow, nxt, popular(k))
    return [seqs[u, : lengths[u]] for u in range(users)]


def make_features(items: int, device: torch.device, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """Random ``(items + 1, dim)`` tables (row 0 zeros) on ``device``; categories multi-hot (~3 labels)."""
    g = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, dim in FEATURE_DIMS.items():
        if name == "category":
            t = (torch.rand(items + 1, dim, generator=g, device=device) < 3.0 / dim).to(dtype)
        else:
            t = torch.randn(items + 1, dim, generator=g, device=device, dtype=dtype)
        t[0] = 0
        out[name] = t
    return out


def model_params(arch: str, size: dict[str, Any]) -> dict[str, Any]:
    common = {k: size[k] for k in ("d", "n_layers", "n_heads", "d_ff")}
    common.update(dropout=0.2, attn_dropout=0.2)
    if arch == "maf":
        return {"architecture": "maf", "modalities": list(FEATURE_DIMS), "d_mm": size["d_mm"],
                "fusion": "sum", "multitask": True, **common}  # fmt: skip
    return {"architecture": arch, **common}


def train_flops(arch: str, size: dict[str, Any], lengths: np.ndarray, num_items: int) -> float:
    """Model FLOPs of one epoch over the real target positions (forward + backward = 3x forward)."""
    d, d_ff, layers, d_mm = size["d"], size["d_ff"], size["n_layers"], size["d_mm"]
    positions = float(lengths.sum())
    pairs = float((lengths * (lengths + 1) / 2).sum())  # causal (query, key) pairs
    per_layer = positions * (8 * d * d + 4 * d * d_ff) + pairs * 4 * d
    fwd = layers * per_layer + positions * 2 * d * (num_items + 1)
    if arch == "maf":
        feat = sum(FEATURE_DIMS.values())
        fwd += layers * (positions * 4 * d_mm * d_mm + pairs * 2 * d_mm)  # W_Qm, W_Km and multimodal scores
        fwd += positions * 2 * feat * d_mm + positions * 2 * d * feat  # E_m projection, multitask decoders
    return 3.0 * fwd


def eval_flops(arch: str, size: dict[str, Any], lengths: np.ndarray, num_items: int) -> float:
    """Forward FLOPs of scoring every item for each user (the encoder runs over the whole history)."""
    flops = train_flops(arch, size, lengths, num_items) / 3.0
    positions = float(lengths.sum())
    flops -= positions * 2 * size["d"] * (num_items + 1)  # only the last position is scored ...
    if arch == "maf":
        flops -= positions * 2 * size["d"] * sum(FEATURE_DIMS.values())  # ... and no decoders
    return flops + len(lengths) * 2 * size["d"] * (num_items + 1)


def measured_peak(device: torch.device, dtype: torch.dtype) -> float:
    """TFLOP/s of a large square matmul in ``dtype`` on ``device`` (mean of timed repeats after warm-up)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps = 10 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_one(
    arch: str, precision: str, size: dict[str, Any], data: dict[str, Any], args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """Train ``arch`` for ``args.epochs`` epochs and return the last epoch's figures."""
    seed_everything(args.seed)
    features = data["features"] if arch == "maf" else None
    model = build_model(arch, data["num_items"], args.max_len, model_params(arch, size), features).to(device)
    params = {
        "epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr,
        "early_stopping": {"metric": "ndcg@20", "patience": None}, "ks": [10, 20],
        "bf16": precision == "bf16", "compile": args.compile, "loss": args.loss,
        "loss_chunk_size": args.loss_chunk_size, "num_negatives": args.num_negatives,
        "eval_batch_size": args.eval_batch_size, "eval_max_scores": args.eval_max_scores,
        "length_grouping": args.length_grouping, "loss_mask_history": args.loss_mask_history,
    }  # fmt: skip
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    inputs, targets, valid_h, valid_t = data["inputs"], data["targets"], data["valid_h"], data["valid_t"]
    history = fit(model, inputs, targets, valid_h, valid_t, params, args.seed, None, device)
    last = history["epochs"][-1]
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    windows = len(data["inputs"])
    row = {
        "model": arch, "precision": precision, "compile": bool(args.compile),
        "loss": args.loss + (" (history masked)" if args.loss_mask_history else ""),
        "windows_per_s": windows / last["train_seconds"], "epoch_s": last["train_seconds"],
        "eval_s": last["valid_seconds"],
        "train_tflops": train_flops(arch, size, data["window_lengths"], data["num_items"])
        / last["train_seconds"] / 1e12,
        "eval_tflops": eval_flops(arch, size, data["valid_lengths"], data["num_items"])
        / last["valid_seconds"] / 1e12,
        "peak_mem_gib": peak_mem, "valid_ndcg@20": last["valid"]["ndcg@20"],
        "epochs_s": [round(e["train_seconds"], 3) for e in history["epochs"]],
    }  # fmt: skip
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    """Generate the data of ``--size``, time each model and precision, print one table (and JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--models", default="sasrec,maf")
    parser.add_argument("--precision", default="fp32", help="comma list of fp32, bf16")
    parser.add_argument("--epochs", type=int, default=2, help="last one reported (first warms up)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--eval-batch-size", type=int, default=1024)
    parser.add_argument("--eval-max-scores", type=int, default=2**28)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--loss", choices=["full", "sampled_softmax"], default="full")
    parser.add_argument("--loss-chunk-size", type=int, default=32768, help="0: one logits matrix")
    parser.add_argument("--num-negatives", type=int, default=256)
    parser.add_argument(
        "--loss-mask-history", action="store_true", help="training.loss_mask_history (full loss only)"
    )
    parser.add_argument("--length-grouping", type=int, default=0, help="training.length_grouping")
    parser.add_argument("--compile", default="", help="torch.compile backend (e.g. inductor); empty: eager")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    args.loss_chunk_size = args.loss_chunk_size or None
    args.compile = args.compile or False
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    size = SIZES[args.size]
    started = time.perf_counter()
    seqs = make_sequences(size["users"], size["items"], size["interactions"], args.seed)
    train = [s[:-2] for s in seqs]
    inputs, targets = training_windows(train, args.max_len)
    valid_h = train
    data = {
        "num_items": size["items"], "inputs": inputs, "targets": targets, "valid_h": valid_h,
        "valid_t": np.array([s[-2] for s in seqs], dtype=np.int64),
        "window_lengths": (targets > 0).sum(axis=1), "valid_lengths": np.minimum([len(h) for h in valid_h],
                                                                                 args.max_len),
    }  # fmt: skip
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "maf" in models:
        dtype = torch.bfloat16 if size.get("feature_dtype") == "bf16" else torch.float32
        data["features"] = make_features(size["items"], device, dtype, args.seed)
    setup_s = time.perf_counter() - started
    lengths = np.array([len(s) for s in seqs])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"# {args.size}: {size['users']:,} users, {size['items']:,} items, "
        f"{int(lengths.sum()):,} interactions "
        f"(length mean {lengths.mean():.2f}, median {int(np.median(lengths))}, max {lengths.max()}), "
        f"{len(inputs):,} training windows, {int((targets > 0).sum()):,} targets; d={size['d']}, "
        f"{size['n_layers']} layers, {size['n_heads']} heads, batch {args.batch_size}; device {name}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; data setup {setup_s:.1f} s",
        flush=True,
    )
    rows = []
    peaks = {}
    for precision in [p.strip() for p in args.precision.split(",") if p.strip()]:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        peaks[precision] = measured_peak(device, dtype)
        for arch in models:
            row = run_one(arch, precision, size, data, args, device)
            row["peak_tflops"] = peaks[precision]
            row["datasheet_tflops"] = next(
                (v.get(precision) for k, v in DATASHEET.items() if k in name), float("nan")
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    header = ("| model | precision | loss | windows/s | s/epoch | eval s (all users) | train TFLOP/s | "
              "% of measured peak | eval TFLOP/s | peak mem GiB | valid NDCG@20 |")  # fmt: skip
    print("\n" + header + "\n" + "|---" * 11 + "|")
    for r in rows:
        print(
            f"| {r['model']} | {r['precision']}{' compiled' if r['compile'] else ''} | {r['loss']} | "
            f"{r['windows_per_s']:,.0f} | {r['epoch_s']:.2f} | {r['eval_s']:.2f} | {r['train_tflops']:.3g} | "
            f"{100 * r['train_tflops'] / r['peak_tflops']:.1f}% of {r['peak_tflops']:.3g} | "
            f"{r['eval_tflops']:.3g} | {r['peak_mem_gib']:.1f} | {r['valid_ndcg@20']:.4f} |"
        )
    by = {(r["model"], r["precision"]): r["epoch_s"] for r in rows}
    for precision in peaks:
        if ("maf", precision) in by and ("sasrec", precision) in by:
            ratio = by[("maf", precision)] / by[("sasrec", precision)]
            print(f"MAF / SASRec epoch time ({precision}): {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "device": name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
