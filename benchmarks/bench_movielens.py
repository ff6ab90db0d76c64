"""MovieLens-100k benchmark: SASRec, FDSA and MAF on RecBole's atomic files, leave-one-out, full ranking.

Not a test. RecBole ships ``ml-100k.inter`` / ``ml-100k.item`` inside its wheel; the script downloads the
wheel (``pip download --no-deps recbole==1.2.1``, no install) unless ``--wheel`` points at one, reads the two
files from the zip and runs the project's own code on them:

* ``ingestion.interaction_formats.ingest_interaction_files`` (genres -> categories, titles -> text);
* the sequences nodes (leave-one-out: last item test, second last validation; no k-core: every ml-100k user
  has >= 20 ratings, as RecBole's default ml-100k config keeps everything);
* the features nodes: ``encode_texts`` with the project's text-encoder parameters (offline this falls back to
  the bundled MiniLM), ``encode_categories`` (multi-hot genres); no images, so the image table has no
  columns and MAF and FDSA use text + category;
* ``train_model`` (early stopping on validation NDCG@20) and ``evaluate_scorer`` (full ranking, pessimistic
  ties) for each model, plus the popularity floor.

Run (about half an hour on two CPU cores with the defaults)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_movielens.py [--epochs 100] [--d 64] [--seed 42]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from kedro.config import OmegaConfigLoader

from maf_pipeline.datasets import RawSource
from maf_pipeline.models import Popularity, model_from_artifact
from maf_pipeline.parameters import filled, resolve_parameters
from maf_pipeline.pipelines.evaluation.nodes import evaluate_scorer
from maf_pipeline.pipelines.features.nodes import encode_categories, encode_texts
from maf_pipeline.pipelines.ingestion.interaction_formats import ingest_interaction_files
from maf_pipeline.pipelines.sequences.nodes import build_id_maps, build_sequences
from maf_pipeline.training import train_model

logger = logging.getLogger("bench_movielens")
REPO = Path(__file__).resolve().parents[1]
MEMBERS = ("recbole/dataset_example/ml-100k/ml-100k.inter", "recbole/dataset_example/ml-100k/ml-100k.item")
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr")


def fetch_files(wheel: Path | None, workdir: Path) -> Path:
    """Extract ml-100k.inter/.item from the RecBole wheel (downloaded with pip if not given) into workdir."""
    if wheel is None:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "recbole==1.2.1"]
        subprocess.run([*pip, "-d", str(workdir)], check=True)
        wheel = next(workdir.glob("recbole-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        for member in MEMBERS:
            (workdir / Path(member).name).write_bytes(zf.read(member))
    return workdir / "ml-100k.inter"


def project_parameters() -> dict[str, Any]:
    """The project's base parameters (text encoder, categories, sequences, ingestion settings)."""
    loader = OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env="base")
    return resolve_parameters(loader["parameters"])  # complete blocks, as nodes receive them


def model_blocks(d: int) -> dict[str, dict[str, Any]]:
    """SASRec, FDSA and MAF at one size (the attention models share d, layers and heads, as in the paper)."""
    common = {"d": d, "n_layers": 2, "n_heads": 2, "d_ff": 4 * d, "dropout": 0.2, "attn_dropout": 0.2}
    modalities = ["image", "text", "category"]  # image has no columns here: build_model drops it
    return {
        "sasrec": {"architecture": "sasrec", **common},
        "fdsa": {"architecture": "fdsa", "modalities": modalities, **common},
        "maf": {
            "architecture": "maf",
            "modalities": modalities,
            "d_mm": d // 2,
            "fusion": "sum",
            "multitask": True,
            "mtl_lambda": 1.0,  # with the default normalised multitask losses (models/maf.py)
            **common,
        },
    }


def main() -> None:
    """Prepare ml-100k with the project's nodes, train the three models and print their test metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a downloaded recbole-*.whl (default: pip download)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--models", default="sasrec,fdsa,maf")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = project_parameters()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        inter = fetch_files(args.wheel, Path(tmp))
        ingestion = params["ingestion"]["interaction_only"]
        interactions, items, report = ingest_interaction_files(RawSource(str(inter)), ingestion, None)
    logger.info("ml-100k: %s", report["summary"])
    item_index, user_index = build_id_maps(interactions)
    train, valid, test = build_sequences(interactions, item_index, user_index, args.max_len, "train_only")
    features = params["features"]
    no_cache = filled("features.cache", {"enabled": False})
    text = encode_texts(item_index, items, None, features["text_encoder"], no_cache, args.seed)
    category, vocabulary = encode_categories(item_index, items, features["categories"])
    image = {"features": torch.zeros(len(item_index) + 1, 0)}
    logger.info(
        "features: text %s (%s), category %s (%d genres)",
        tuple(text["features"].shape), text["__metadata__"]["encoder"], tuple(category["features"].shape),
        len(vocabulary["labels"]),
    )  # fmt: skip
    training = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "objective": "all_positions",
        "early_stopping": {"metric": "ndcg@20", "patience": args.patience},
        "ks": [10, 20],
        "device": "auto",
        "bf16": False,
        "checkpoint_dir": None,
        "num_threads": args.threads or None,
    }
    evaluation = {"protocol": "full", "mask_history": False, "ks": [10, 20], "batch_size": 1024}
    tables = {"image": image["features"], "text": text["features"], "category": category["features"]}
    rows = []
    num_items = len(item_index)
    pop = Popularity.from_sequences(list(train["items"]), num_items)
    metrics, _ = evaluate_scorer(pop, num_items, 1, train, valid, test, evaluation, 0)
    rows.append(
        {"model": "pop", **{m: metrics["test"][m] for m in METRICS}, "best_epoch": "-", "minutes": "0"}
    )
    blocks = model_blocks(args.d)
    for name in args.models.split(","):
        t0 = time.perf_counter()
        artifact, history = train_model(
            train, valid, item_index, image, text, category, blocks[name], training, args.max_len, args.seed
        )
        model = model_from_artifact(artifact, tables)
        metrics, _ = evaluate_scorer(model, num_items, args.max_len, train, valid, test, evaluation, 0)
        minutes = (time.perf_counter() - t0) / 60
        rows.append(
            {
                "model": name,
                **{m: metrics["test"][m] for m in METRICS},
                "best_epoch": history["best_epoch"],
                "minutes": f"{minutes:.1f}",
            }
        )
        logger.info("%s: test %s", name, {m: round(metrics["test"][m], 4) for m in METRICS})
    print(f"\nml-100k, leave-one-out, full ranking over {num_items} items, {len(test)} test users")
    print(f"d={args.d}, 2 layers, 2 heads, max_len {args.max_len}, lr {args.lr}, seed {args.seed}")
    print(markdown(pd.DataFrame(rows)))
    print(f"total {(time.perf_counter() - started) / 60:.1f} min")


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table, floats with four decimals."""
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in table.to_numpy()]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


if __name__ == "__main__":
    main()
