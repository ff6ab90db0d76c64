"""Public benchmark: Amazon Beauty as the sequential-recommendation literature uses it, beside published rows.

Not a test. Reads the line-per-user ``Beauty.txt`` (+ ``Beauty_item2attributes.json``) from
``../shared/data/s3rec-beauty/`` (never copied into the project) and runs the project's own code on it:

* ``ingestion.interaction_formats.ingest_interaction_files`` (format detected: line per user; the attribute
  ids become the ``category`` modality);
* the sequences nodes (leave-one-out: last item test, second last validation; the file is already 5-core);
* ``encode_categories`` (multi-hot attributes); no text and no images, so those tables have no columns and
  SASRecF, FDSA and MAF use the category modality alone;
* compare's :class:`RunContext` (``train_model`` with early stopping on validation NDCG@20, then
  ``evaluate_scorer``: full ranking over all items, pessimistic ties) per model and seed, and compare's
  ``run_popularity`` and ``summarise`` (mean ± std over seeds).

It prints Recall@10/20 and NDCG@10/20 (test, mean ± std) beside the published rows of the data folder's
README, and writes the runs (CSV) and every run's training history (validation curve, JSON) to ``--out``.
Settings default to the issue's: d=64, 2 layers, 2 heads, d_ff 4d, dropout 0.5 (the model blocks' own),
lr 1e-3, batch 256, max_len 50, full cross-entropy, patience 10, MAF d'=32, sum fusion; MAF's lambda is 5
(kept on validation; the issue's 1 with ``--set maf.mtl_lambda=1.0``).

Run (one SASRec training is ~40 s/epoch on one idle CPU core; checkpoints make a killed run resume)::

    PYTHONPATH=src python benchmarks/bench_public.py --models sasrec,maf --seeds 42,43,44
    PYTHONPATH=src python benchmarks/bench_public.py --models sasrec --set sasrec.dropout=0.3 \\
        --train weight_decay=1e-4 --label sasrec-wd
    PYTHONPATH=src python benchmarks/bench_public.py --models maf --grid 'd_mm=[16,32]' \\
        --grid 'mtl_lambda=[0.3,1]' --grid 'side_values=[false,true]' --epochs 30   # compare's grid
    PYTHONPATH=src python benchmarks/bench_public.py --from-runs data/08_reporting/bench_public/runs_*.csv
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from kedro.config import OmegaConfigLoader

from maf_pipeline.datasets import RawSource
from maf_pipeline.model_inputs import ModelInputs
from maf_pipeline.models import Popularity
from maf_pipeline.parameters import filled, resolve_parameters
from maf_pipeline.pipelines.compare.nodes import RunContext, deep_merge, resolve_maf_config, run_grid_search
from maf_pipeline.pipelines.compare.reporting import build_grid_report, metric_label, summarise
from maf_pipeline.pipelines.features.nodes import encode_categories
from maf_pipeline.pipelines.ingestion.interaction_formats import ingest_interaction_files
from maf_pipeline.pipelines.sequences.nodes import build_id_maps, build_sequences

logger = logging.getLogger("bench_public")
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "s3rec-beauty" / "Beauty.txt"
METRICS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]
ALL_MODELS = "pop,gru4rec,sasrec,bert4rec,sasrecf,fdsa,maf"
PROTOCOLS = {
    "full": "full ranking over all items, the user's earlier items included (the project's default)",
    "full_unseen": "full ranking, the user's earlier items excluded (the published rows' protocol)",
}
ATTENTION = ("sasrec", "bert4rec", "sasrecf", "fdsa", "maf")  # share d, layers and heads (paper section 4.2)


class BenchContext(RunContext):
    """Compare's run context, evaluating full ranking twice: over all items (the project's default) and with
    the user's earlier items excluded (``mask_history``). The published rows use the second: the evaluators
    of S3-Rec (which made ``Beauty.txt``; its trainer zeroes the scores of the user's training items before
    the top-k) and RecBole (DIF-SR, DuoRec; its full-sort evaluation sets history items to -inf) both drop
    them. Beauty's validation and test items are never in the user's history, so this only removes wrong
    candidates.
    """

    def evaluate(self, scorer: torch.nn.Module, max_len: int) -> list[dict[str, Any]]:
        """Rows of both settings, the masked one under protocol ``full_unseen``."""
        rows = []
        for masked in (False, True):
            base = self.evaluation
            self.evaluation = {**base, "mask_history": masked}
            try:
                rows.extend(
                    {**row, "protocol": "full_unseen" if masked else "full"}
                    for row in super().evaluate(scorer, max_len)
                )
            finally:
                self.evaluation = base
        return rows


def project_parameters() -> dict[str, Any]:
    """The project's base parameters (model blocks, training, evaluation, categories, ingestion)."""
    loader = OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env="base")
    return resolve_parameters(loader["parameters"])  # complete blocks, as nodes receive them


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``a.b=value`` strings to a nested dict (values parsed as YAML: numbers, lists, booleans)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {item!r}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def model_blocks(params: dict[str, Any], args: argparse.Namespace, sets: dict[str, Any]) -> dict[str, Any]:
    """Each model's project block, the attention models at the shared size, then the ``--set`` overrides."""
    size = {"d": args.d, "n_layers": args.layers, "n_heads": args.heads, "d_ff": 4 * args.d}
    blocks = {}
    for name in ("gru4rec", "caser", *ATTENTION):
        block = dict(params[name]["model"])
        if name in ATTENTION:
            block.update(size)
        if name in ("sasrecf", "fdsa", "maf"):
            block["modalities"] = ["category"]  # the only side information of this data set
        if name == "maf":
            # lambda 5: best on validation over three seeds (README); --set maf.mtl_lambda=1.0 for the paper's
            block.update(d_mm=args.d // 2, fusion="sum", multitask=True, mtl_lambda=5.0)
        blocks[name] = deep_merge(block, sets.get(name))
    return blocks


def published_rows(readme: Path) -> pd.DataFrame:
    """The ``| model | Recall@10 | NDCG@10 |`` table of the data folder's README (empty if none)."""
    if not readme.exists():
        return pd.DataFrame(columns=["model", "recall@10", "ndcg@10"])
    rows, header = [], None
    for line in readme.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if not cells or set("".join(cells)) <= set("-: "):
            continue
        if header is None and any(c.lower().startswith("recall@") for c in cells):
            header = [c.lower() for c in cells]
            continue
        if header and len(cells) == len(header) and re.fullmatch(r"[0-9.]+", cells[1]):
            rows.append(
                {"model": cells[0], **{h: float(c) for h, c in zip(header[1:], cells[1:], strict=True)}}
            )
    return pd.DataFrame(rows)


def prepare(data: Path, params: dict[str, Any], max_len: int) -> dict[str, Any]:
    """Beauty through the project's ingestion, sequences and category-feature nodes."""
    ingestion = params["ingestion"]["interaction_only"]
    interactions, items, report = ingest_interaction_files(RawSource(str(data)), ingestion, None)
    logger.info("%s: %s", data.name, report["summary"])
    item_index, user_index = build_id_maps(interactions)
    train, valid, test = build_sequences(interactions, item_index, user_index, max_len, "train_only")
    category, vocabulary = encode_categories(item_index, items, params["features"]["categories"])
    empty = {"features": torch.zeros(len(item_index) + 1, 0)}
    logger.info(
        "category features %s (%d attributes)", tuple(category["features"].shape), len(vocabulary["labels"])
    )
    return {
        "train_sequences": train,
        "valid_sequences": valid,
        "test_sequences": test,
        "item_index": item_index,
        "image_features": empty,
        "text_features": empty,
        "category_features": category,
    }


MODEL_INPUTS = (
    "train_sequences", "valid_sequences", "test_sequences", "item_index",
    "image_features", "text_features", "category_features",
)  # fmt: skip


def environment(env: str) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """A Kedro environment's parameters, its model inputs from its catalog (run its data and features first:
    ``kedro run --env=<env> --to-outputs=test_sequences,image_features,text_features,category_features``) and
    the README beside its raw files (the published rows)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(REPO)
    with KedroSession.create(project_path=REPO, env=env) as session:
        context = session.load_context()
        data = {name: context.catalog.load(name) for name in MODEL_INPUTS}
        raw = Path(context.config_loader["catalog"]["raw_reviews"]["filepath"])
        return resolve_parameters(context.params), data, (REPO / raw).resolve().parent / "README.md"


def borrow_features(data: dict[str, Any], spec: str) -> None:
    """``modality=env``: that modality's table from another environment, re-indexed by item id (e.g. the
    MiniLM text of ``scientific`` for the items of ``scientific_mm``); items it lacks get zero rows."""
    modality, _, env = spec.partition("=")
    _, other, _ = environment(env)
    table = other[f"{modality}_features"]["features"]
    row = dict(zip(other["item_index"]["item_id"], other["item_index"]["item_idx"], strict=True))
    ids = data["item_index"].sort_values("item_idx")["item_id"]
    out = torch.zeros(len(ids) + 1, table.shape[1], dtype=table.dtype)
    found = [(i, row[item]) for i, item in enumerate(ids, start=1) if item in row]
    out[[i for i, _ in found]] = table[[j for _, j in found]]
    logger.info("%s features from env %s: %d of %d items", modality, env, len(found), len(ids))
    meta = {**other[f"{modality}_features"].get("__metadata__", {}), "borrowed_from": env}
    data[f"{modality}_features"] = {"features": out, "__metadata__": meta}


def table(
    summary: pd.DataFrame,
    labels: list[str],
    published: pd.DataFrame,
    info: dict[str, str],
    metrics: list[str],
) -> str:
    """Markdown: this project's rows (mean ± std over seeds) and the published rows below them."""
    cols = ["model", *[metric_label(m) for m in metrics], "seeds", "best epochs", "min/run"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for label in labels:
        sub = summary[summary["column"] == label].set_index("metric")
        if sub.empty:
            continue
        cells = [
            f"{sub.loc[m, 'mean']:.4f}" + (f" ± {sub.loc[m, 'std']:.4f}" if sub.loc[m, "n"] > 1 else "")
            for m in metrics
        ]
        lines.append("| " + " | ".join([label, *cells, *info[label].split("|")]) + " |")
    for row in published.to_dict("records"):
        cells = [f"{row[m]:.4f}" if m in row and pd.notna(row[m]) else "-" for m in metrics]
        lines.append("| " + " | ".join([f"published: {row['model']}", *cells, "-", "-", "-"]) + " |")
    return "\n".join(lines)


def run_info(runs: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """Row labels in order of appearance and each one's ``seeds|best epochs|min/run`` cells."""
    labels, info = list(dict.fromkeys(runs["variant"])), {}
    for label in labels:
        sub = runs[runs["variant"] == label]
        if "seed" not in sub or sub["seed"].isna().all():  # Pop: deterministic, no training
            info[label] = "-|-|0"
            continue
        per_seed = sub.groupby("seed")[["best_epoch", "train_seconds"]].first()
        best = ", ".join(str(int(b)) for b in per_seed["best_epoch"])
        info[label] = f"{len(per_seed)}|{best}|{per_seed['train_seconds'].mean() / 60:.1f}"
    return labels, info


def print_tables(runs: pd.DataFrame, published: pd.DataFrame, metrics: list[str] = METRICS) -> None:
    """Test and validation tables for both protocols; the published rows beside the protocol they use."""
    labels, info = run_info(runs)
    for split in ("test", "valid"):
        summary = summarise(runs, labels, metrics, split=split)
        for protocol, title in PROTOCOLS.items():
            print(f"\n{split}, {title}:")
            rows = published if split == "test" and protocol == "full_unseen" else published.iloc[:0]
            print(table(summary[summary["protocol"] == protocol], labels, rows, info, metrics))


def setup(args: argparse.Namespace) -> tuple[dict, dict, dict, dict, list[str], Path]:
    """Parameters, model inputs, training settings, model blocks, metrics and the published rows' README: of
    Beauty (the issue's settings) or of a Kedro environment (its own, ``--lr``/``--patience`` on top)."""
    sets, cli = parse_assignments(args.set), {"num_threads": args.threads or None}
    if args.env:
        params, data, readme = environment(args.env)
        for spec in args.features:
            borrow_features(data, spec)
        blocks = {
            name: deep_merge(params[name]["model"], sets.get(name)) for name in ALL_MODELS.split(",")[1:]
        }
        blocks["caser"] = deep_merge(params["caser"]["model"], sets.get("caser"))
        args.max_len = int(params["sequences"]["max_len"])
        args.out = args.out or REPO / "data" / args.env / "08_reporting" / "bench_public"
        cli["checkpoint_dir"] = str(REPO / "data" / args.env / "06_models" / "checkpoints")
        stop = {"patience": args.patience} if args.patience is not None else {}
        training = deep_merge(params["training"], {**cli, "early_stopping": stop})
        if args.lr is not None:
            training["learning_rate"] = args.lr
        metrics = list(params["compare"]["metrics"])
    else:
        params, readme = project_parameters(), args.data.parent / "README.md"
        data = prepare(args.data, params, args.max_len)
        args.lr = 1e-3 if args.lr is None else args.lr
        args.patience = 10 if args.patience is None else args.patience
        args.out = args.out or REPO / "data" / "08_reporting" / "bench_public"
        blocks, metrics = model_blocks(params, args, sets), METRICS
        training = deep_merge(
            params["training"],
            {
                **cli,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "learning_rate": args.lr,
                "early_stopping": {"metric": "ndcg@20", "patience": args.patience},
                "checkpoint_dir": str(REPO / "data" / "06_models" / "checkpoints"),
            },
        )
    return params, data, deep_merge(training, parse_assignments(args.train)), blocks, metrics, readme


def main() -> None:
    """Prepare Beauty, train the selected models over the seeds, print the table beside the published rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=DATA, help="the line-per-user file (default: %(default)s)"
    )
    parser.add_argument("--models", default=ALL_MODELS, help="comma-separated (default: %(default)s)")
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=None, help="default 10 (Beauty) or the env's")
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=None, help="default 1e-3 (Beauty) or the env's")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default)")
    parser.add_argument(
        "--set", action="append", default=[], help="model.key=value override, e.g. maf.d_mm=16"
    )
    parser.add_argument(
        "--train", action="append", default=[], help="training key=value, e.g. weight_decay=1e-4"
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        help="a MAF grid axis key=[values] (compare.grid: d_mm, mtl_lambda, fusion or any MAF key), e.g. "
        "'mm_dropout=[0.0,0.2]'; the point best on validation is then MAF's configuration",
    )
    parser.add_argument("--grid-seeds", default="42", help="seeds per grid point")
    parser.add_argument("--label", default="", help="suffix of the row labels and output files")
    parser.add_argument(
        "--env",
        default=None,
        help="a Kedro environment (scientific, scientific_mm): its sequences, features, model blocks, "
        "training and metrics instead of Beauty; run its data and features first",
    )
    parser.add_argument(
        "--features", action="append", default=[], help="modality=env: that table from another env"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="default data[/<env>]/08_reporting/bench_public"
    )
    parser.add_argument(
        "--from-runs",
        nargs="+",
        type=Path,
        help="print the tables of earlier runs (their runs_*.csv, e.g. models trained in parallel processes) "
        "without training",
    )
    args = parser.parse_args()
    if args.from_runs:
        runs = pd.concat([pd.read_csv(path) for path in args.from_runs], ignore_index=True)
        runs = runs.drop_duplicates(["variant", "seed", "protocol", "split", "metric"])  # Pop in several
        params, _, readme = environment(args.env) if args.env else ({}, None, args.data.parent / "README.md")
        metrics = params["compare"]["metrics"] if args.env else METRICS
        print(f"{args.env or args.data.name}: runs from {', '.join(p.name for p in args.from_runs)}")
        print_tables(runs, published_rows(readme), metrics)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    models = args.models.split(",")
    params, data, training, blocks, metrics, readme = setup(args)
    evaluation = {**params["evaluation"], "protocol": "full"}
    compare = filled("compare", {"models": models, "seeds": seeds, "protocols": ["full"]})
    inputs = ModelInputs(**data)
    ctx = BenchContext(inputs, compare, training, evaluation, args.max_len, params["seed"])
    suffix = f" ({args.label})" if args.label else ""
    grid_report = ""
    args.out.mkdir(parents=True, exist_ok=True)
    if args.grid and "maf" in models:  # compare's grid search, selected on validation NDCG@20
        grid = filled(
            "compare.grid",
            {
                "enabled": True,
                **parse_assignments(args.grid),
                "seeds": [int(s) for s in args.grid_seeds.split(",")],
                "metric": "ndcg@20",
            },
        )
        grid_runs, selection = run_grid_search(
            inputs, blocks["maf"], grid, compare, training, evaluation, args.max_len, params["seed"]
        )
        blocks["maf"] = resolve_maf_config(blocks["maf"], selection)
        grid_report, _ = build_grid_report(grid_runs, selection)
        grid_runs.to_csv(args.out / f"grid{'_' + args.label if args.label else ''}.csv", index=False)
    stem = f"runs_{'-'.join(models)}" + (f"_{args.label}" if args.label else "")  # parallel runs: own files
    frames: list[pd.DataFrame] = []

    def save() -> pd.DataFrame:
        """Write the runs so far (after every seed: a killed or interrupted benchmark keeps finished runs)."""
        runs = pd.concat(frames, ignore_index=True)
        runs.to_csv(args.out / f"{stem}.csv", index=False)
        keys = ("variant", "seed", "config", "best_epoch", "total_seconds", "epochs")
        curves = [{k: h[k] for k in keys} for h in ctx.histories]
        (args.out / f"{stem}_histories.json").write_text(json.dumps(curves, indent=1, default=str))
        return runs

    if "pop" in models:  # as compare's run_popularity, evaluated by the bench context
        pop = Popularity.from_sequences(list(data["train_sequences"]["items"]), ctx.num_items)
        frames.append(pd.DataFrame([{"variant": "pop", **row} for row in ctx.evaluate(pop, args.max_len)]))
    for name in (m for m in models if m != "pop"):
        label = name + suffix
        for seed in seeds:
            t0 = time.perf_counter()
            frames.append(pd.DataFrame(ctx.train_and_evaluate(label, blocks[name], seed, training)))
            save()
            logger.info("%s seed %d done in %.1f min", label, seed, (time.perf_counter() - t0) / 60)
    runs = save()
    name = f"env {args.env}" if args.env else args.data.name
    print(
        f"\n{name}: {ctx.num_items} items, {len(data['test_sequences'])} users, max_len {args.max_len}, "
        f"lr {training['learning_rate']}, batch {training['batch_size']}, early stopping "
        f"{training['early_stopping']}, seeds {seeds}, training overrides {args.train}, model overrides "
        f"{args.set}, features {args.features}, blocks { {m: blocks[m] for m in models if m in blocks} }"
    )
    print_tables(runs, published_rows(readme), metrics)
    if grid_report:
        print("\n" + grid_report)
    print(f"total {(time.perf_counter() - started) / 60:.1f} min; runs and histories in {args.out}")


if __name__ == "__main__":
    main()
