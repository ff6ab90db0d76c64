"""compare nodes on synthetic data: seeds loop, model selection, reuse of the MAF runs, grid selection."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from maf_pipeline.model_inputs import ModelInputs, bundle_model_inputs
from maf_pipeline.models import MODELS
from maf_pipeline.parameters import filled, filled_model
from maf_pipeline.pipelines.compare.nodes import (
    RUN_COLUMNS,
    deep_merge,
    resolve_maf_config,
    run_grid_search,
    run_maf_variants,
    run_model,
    run_popularity,
    worker_devices,
)
from maf_pipeline.pipelines.compare.pipeline import TAG, create_compare_pipeline, create_pipeline
from tests.models.synthetic import make_features, make_sequences, tiny_maf_params

REPO = Path(__file__).resolve().parents[3]
METRICS = {"recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr"}


@pytest.fixture(scope="module")
def shared() -> ModelInputs:
    data, feats = make_sequences(num_users=20, num_items=30, seed=2), make_features(30)
    return ModelInputs(
        **data,
        image_features=feats["image"],
        text_features=feats["text"],
        category_features=feats["category"],
    )


@pytest.fixture
def settings(tmp_path: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is several times faster
    training = {
        "epochs": 2,
        "batch_size": 16,
        "learning_rate": 1e-2,
        "early_stopping": {"metric": "ndcg@20", "patience": None},
        "device": "cpu",
        "bf16": False,
        "checkpoint_dir": str(tmp_path / "ckpt"),
    }
    evaluation = {"protocol": "full", "num_negatives": 5, "ks": [10, 20], "device": "cpu"}
    compare = filled(
        "compare", {"models": ["pop", "sasrec", "maf"], "seeds": [1, 2], "protocols": ["full", "sampled"]}
    )
    yield {"compare": compare, "training": training, "evaluation": evaluation}
    torch.set_num_threads(threads)


def run(shared, block, settings, name, **compare):
    c = filled("compare", {**settings["compare"], **compare})
    return run_model(shared, block, c, settings["training"], settings["evaluation"], 6, 0, name)


def test_deep_merge_overrides_nested_keys_only() -> None:
    base = {"epochs": 200, "early_stopping": {"metric": "ndcg@20", "patience": 10}, "lr": 1e-4}
    merged = deep_merge(base, {"epochs": 5, "early_stopping": {"patience": 2}})
    assert merged == {"epochs": 5, "early_stopping": {"metric": "ndcg@20", "patience": 2}, "lr": 1e-4}
    assert base["early_stopping"]["patience"] == 10 and deep_merge(base, None) == base


def test_run_model_loops_over_seeds_and_protocols(shared, settings) -> None:
    sasrec = {"architecture": "sasrec", "d": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16}
    runs = run(shared, sasrec, settings, "sasrec")
    assert list(runs.columns) == RUN_COLUMNS
    assert sorted(runs["seed"].unique()) == [1, 2]
    assert set(runs["protocol"]) == {"full", "sampled"} and set(runs["split"]) == {"valid", "test"}
    assert set(runs["metric"]) == METRICS and (runs["epochs_run"] == 2).all()
    assert len(runs) == 2 * 2 * 2 * len(METRICS)
    by_seed = runs[(runs["metric"] == "mrr") & (runs["split"] == "test") & (runs["protocol"] == "full")]
    assert by_seed["value"].nunique() == 2  # the seed changes the model
    sampled = runs[(runs["protocol"] == "sampled") & (runs["metric"] == "recall@10")]
    assert (sampled["value"] == 1.0).all()  # 5 negatives + target: always in the top 10
    assert run(shared, sasrec, settings, "sasrec", models=["pop"]).empty  # not selected: skipped
    one_epoch = run(shared, sasrec, settings, "sasrec", seeds=[1], model_training={"sasrec": {"epochs": 1}})
    assert (one_epoch["epochs_run"] == 1).all()  # per-model training override


def test_popularity_is_one_deterministic_run(shared, settings) -> None:
    sequences = (shared.train_sequences, shared.valid_sequences, shared.test_sequences, shared.item_index)
    runs = run_popularity(*sequences, settings["compare"], settings["evaluation"], 0)
    assert runs["variant"].unique().tolist() == ["pop"] and runs["seed"].isna().all()
    assert len(runs) == 2 * 2 * len(METRICS)
    assert run_popularity(*sequences, {**settings["compare"], "models": ["maf"]}, {}, 0).empty


def test_feature_baseline_is_skipped_without_features(shared, settings) -> None:
    empty = {"features": torch.zeros(31, 4)}
    no_features = replace(shared, image_features=empty, text_features=empty, category_features=empty)
    block = {"architecture": "fdsa", "d": 16, "n_layers": 1, "n_heads": 2}
    c = {**settings["compare"], "models": ["fdsa"]}
    block = filled_model(block)
    assert run_model(no_features, block, c, settings["training"], settings["evaluation"], 6, 0, "fdsa").empty


def test_maf_variants_reuse_the_table2_maf_runs(shared, settings) -> None:
    maf = filled_model(tiny_maf_params())
    maf_runs = run(shared, maf, settings, "maf")
    variants = {"Sum": {"fusion": "sum"}, "Gate": {"fusion": "gate"}}
    c, t, e = settings["compare"], settings["training"], settings["evaluation"]
    runs = run_maf_variants(shared, maf, maf_runs, variants, c, t, e, 6, 0)
    assert list(dict.fromkeys(runs["variant"])) == ["Sum", "Gate"]
    reused = runs[runs["variant"] == "Sum"].drop(columns="variant").reset_index(drop=True)
    pd.testing.assert_frame_equal(reused, maf_runs.drop(columns="variant").reset_index(drop=True))
    assert runs[runs["variant"] == "Gate"]["config"].str.contains("fusion=gate").all()
    # without Table 2's runs (MAF not selected) the reference variant is trained
    alone = run_maf_variants(shared, maf, maf_runs.iloc[0:0], {"Sum": {}}, c, t, e, 6, 0)
    assert len(alone) == len(reused) and (alone["train_seconds"] > 0).all()
    assert run_maf_variants(shared, maf, maf_runs, {}, c, t, e, 6, 0).empty
    image_only = {"Image": {"modalities": ["image"]}}
    no_image = replace(shared, image_features={"features": torch.zeros(31, 12)})
    assert run_maf_variants(no_image, maf, maf_runs, image_only, c, t, e, 6, 0).empty


def test_grid_search_selects_on_validation_only(shared, settings) -> None:
    maf = filled_model(tiny_maf_params())
    grid = filled(
        "compare.grid",
        {"enabled": True, "d_mm": [4, 8, 32], "mtl_lambda": [5], "fusion": ["sum", "concat"], "seeds": [3]},
    )
    c, t, e = settings["compare"], settings["training"], settings["evaluation"]
    runs, selection = run_grid_search(shared, maf, grid, c, t, e, 6, 0)
    assert set(runs["variant"].unique()) == {
        f"d_mm={d}, mtl_lambda=5, fusion={f}" for d in (4, 8) for f in ("sum", "concat")
    }
    valid = runs[(runs["split"] == "valid") & (runs["protocol"] == "full") & (runs["metric"] == "ndcg@20")]
    best = valid.groupby("variant")["value"].mean().idxmax()
    assert selection["best"] == dict(
        zip(
            ["d_mm", "mtl_lambda", "fusion"],
            runs[runs["variant"] == best].iloc[0][["grid_d_mm", "grid_mtl_lambda", "grid_fusion"]],
            strict=True,
        )
    )
    assert selection["split"] == "valid" and (runs["seed"] == 3).all()
    assert resolve_maf_config(maf, selection) == {**maf, **selection["best"]}
    levers = {"enabled": True, "d_mm": [8], "mm_dropout": [0.0, 0.3], "side_values": [True], "seeds": [3]}
    levers = filled("compare.grid", {**levers, "fixed": {"scale": "model"}})
    runs, selection = run_grid_search(shared, maf, levers, c, t, e, 6, 0)
    assert set(runs["variant"]) == {f"d_mm=8, mm_dropout={p}, side_values=True" for p in (0.0, 0.3)}
    assert set(selection["best"]) == {"scale", "d_mm", "mm_dropout", "side_values"}
    assert selection["best"]["scale"] == "model" and selection["best"]["side_values"] is True
    assert "side_values=True" in runs["config"].iloc[0] and "scale=model" in runs["config"].iloc[0]
    off_runs, off = run_grid_search(shared, maf, filled("compare.grid"), c, t, e, 6, 0)
    assert off_runs.empty and off == {"enabled": False, "best": {}}
    assert resolve_maf_config(maf, off) == maf


@pytest.mark.slow
def test_concurrent_runs_equal_the_sequential_runs(shared, settings) -> None:
    """Two spawn worker processes give the rows of the in-process run for the same seeds (but the time)."""
    sasrec = {"architecture": "sasrec", "d": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16}
    training = {**settings["training"], "num_threads": 1}
    c = {**settings["compare"], "protocols": ["full"]}
    args = (shared, sasrec, c, training, settings["evaluation"], 6, 0, "sasrec")
    sequential = run_model(*args[:2], filled("compare", {**c, "parallel": {"workers": 1}}), *args[3:])
    concurrent = run_model(*args[:2], filled("compare", {**c, "parallel": {"workers": 2}}), *args[3:])
    keep = [col for col in RUN_COLUMNS if col != "train_seconds"]
    pd.testing.assert_frame_equal(sequential[keep], concurrent[keep])
    assert sequential["seed"].nunique() == 2


def test_worker_devices() -> None:
    if not torch.cuda.is_available():
        assert worker_devices({"workers": "auto", "runs_per_gpu": 3}, 10) == ["cpu"]
        assert worker_devices({"workers": 4, "runs_per_gpu": 1}, 3) == ["cpu"] * 3
    else:
        n = torch.cuda.device_count()
        assert len(worker_devices({"workers": "auto", "runs_per_gpu": 2}, 100)) == 2 * n
    with pytest.raises(ValueError, match="workers"):
        worker_devices({"workers": 0, "runs_per_gpu": 1}, 3)


def test_model_runs_read_the_inputs_bundled_once() -> None:
    """The seven model inputs reach every run node as one ModelInputs, passed by reference (no deep copy of
    the feature tables per node); the popularity floor reads only the sequences (its true lineage)."""
    compare = create_compare_pipeline()
    bundle = next(n for n in compare.nodes if n.name == "compare.bundle_model_inputs")
    assert bundle.outputs == ["compare.model_inputs"] and len(bundle.inputs) == 7
    runs = [n for n in compare.nodes if n.name.startswith("compare.run_") and n.name != "compare.run_pop"]
    assert runs and all(n.inputs[0] == "compare.model_inputs" for n in runs)
    pop = next(n for n in compare.nodes if n.name == "compare.run_pop")
    assert "compare.model_inputs" not in pop.inputs and "image_features" not in pop.inputs
    catalog = yaml.safe_load((REPO / "conf" / "base" / "catalog.yml").read_text())
    assert catalog["compare.model_inputs"]["copy_mode"] == "assign"
    given = {name: object() for name in bundle.inputs}  # each field holds its dataset itself, not a copy
    inputs = bundle_model_inputs(*given.values())
    assert all(getattr(inputs, name) is value for name, value in given.items())


def test_pipeline_has_a_node_per_model_and_experiment() -> None:
    compare = create_compare_pipeline()
    names = {n.name for n in compare.nodes}
    assert {f"compare.run_{m}" for m in (*MODELS, "pop")} <= names
    assert {
        "compare.run_fusion",
        "compare.run_multitask",
        "compare.run_modalities",
        "compare.run_grid_search",
    } <= names
    assert all(TAG in n.tags for n in compare.nodes)
    reports = {
        "table2",
        "table2_csv",
        "table3",
        "table3_csv",
        "table4",
        "table4_csv",
        "figure3",
        "grid_report",
    }
    assert {f"compare.{r}" for r in reports} <= compare.all_outputs()
    assert {"train_sequences", "text_features", "params:compare", "params:maf.model"} <= compare.inputs()
    assert "raw_reviews" in create_pipeline().inputs()  # the full command starts from the raw data
