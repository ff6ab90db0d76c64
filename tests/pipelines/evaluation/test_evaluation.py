"""Evaluation nodes and wiring: popularity by hand, a trained model end to end, catalog factories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maf_pipeline.pipelines.evaluation.nodes import evaluate_model, evaluate_popularity
from maf_pipeline.pipelines.evaluation.pipeline import create_model_pipeline, create_pipeline
from maf_pipeline.training import train_model
from tests.models.synthetic import make_features, make_sequences, tiny_maf_params

REPO = Path(__file__).resolve().parents[3]
PARAMS = {"protocol": "full", "ks": [1, 2], "mask_history": False, "batch_size": 2, "device": "cpu"}


def hand_data() -> dict[str, pd.DataFrame]:
    """5 items; training counts: item 1 x3, item 2 x2, item 3 x1, items 4, 5 x0."""
    train = pd.DataFrame({"user_idx": [0, 1], "items": [np.array([1, 2, 1]), np.array([1, 2, 3])]})
    valid = pd.DataFrame({"user_idx": [0, 1], "history": [np.array([1, 2, 1]), np.array([1, 2, 3])]})
    valid["target"] = [2, 4]
    test = pd.DataFrame({"user_idx": [0, 1], "history": [np.array([2, 1, 2]), np.array([2, 3, 4])]})
    test["target"] = [3, 5]
    index = pd.DataFrame({"item_idx": np.arange(1, 6), "item_id": list("abcde")})
    return {"train": train, "valid": valid, "test": test, "index": index}


def test_popularity_full_ranking_by_hand() -> None:
    d = hand_data()
    metrics, per_user = evaluate_popularity(d["train"], d["valid"], d["test"], d["index"], PARAMS, 0)
    ranks = per_user.set_index(["split", "user_idx"])["rank"]
    # scores 1:3, 2:2, 3:1, 4:0, 5:0 -> item 2 rank 2, item 3 rank 3, items 4 and 5 tie: rank 5 (pessimistic)
    assert ranks.to_dict() == {("valid", 0): 2, ("valid", 1): 5, ("test", 0): 3, ("test", 1): 5}
    assert metrics["valid"]["recall@2"] == 0.5 and metrics["test"]["recall@2"] == 0.0
    assert metrics["valid"]["mrr"] == pytest.approx((1 / 2 + 1 / 5) / 2)
    assert metrics["architecture"] == "pop" and metrics["tie_rule"] == "pessimistic"
    assert list(per_user.columns) == [
        "user_idx", "split", "target", "rank", "recall@1", "ndcg@1", "recall@2", "ndcg@2", "mrr",
    ]  # fmt: skip


def test_popularity_with_history_masking() -> None:
    d = hand_data()
    metrics, per_user = evaluate_popularity(
        d["train"], d["valid"], d["test"], d["index"], {**PARAMS, "mask_history": True}, 0
    )
    ranks = per_user.set_index(["split", "user_idx"])["rank"].to_dict()
    # valid u0: history {1, 2}, target 2 stays -> rank 1; u1: {1, 2, 3} masked -> 4 and 5 tie: rank 2
    # test u0: history {1, 2} + valid target 2 -> 3 ranks 1; u1: {1, 2, 3, 4} masked -> 5 ranks 1
    assert ranks == {("valid", 0): 1, ("valid", 1): 2, ("test", 0): 1, ("test", 1): 1}
    assert metrics["mask_history"] is True


def test_popularity_sampled_protocol() -> None:
    d = hand_data()
    params = {**PARAMS, "protocol": "sampled", "num_negatives": 1}
    metrics, per_user = evaluate_popularity(d["train"], d["valid"], d["test"], d["index"], params, 0)
    # user 0 interacted with {1, 2, 3}: its negative is 4 or 5 (count 0), below targets 2 and 3 -> rank 1
    assert per_user.query("user_idx == 0")["rank"].tolist() == [1, 1]
    # user 1 interacted with all 5 items: no negative left, the target is alone -> rank 1
    assert per_user.query("user_idx == 1")["rank"].tolist() == [1, 1]
    assert metrics["num_negatives"] == 1
    with pytest.raises(ValueError, match="protocol"):
        evaluate_popularity(d["train"], d["valid"], d["test"], d["index"], {"protocol": "x"}, 0)


def test_trained_model_is_evaluated_and_beats_popularity(tmp_path: Path) -> None:
    data, feats = make_sequences(num_users=24, seed=2), make_features(30)
    training = {
        "epochs": 25,
        "batch_size": 8,
        "learning_rate": 1e-2,
        "device": "cpu",
        "checkpoint_dir": str(tmp_path),
        "early_stopping": {"metric": "ndcg@20", "patience": 5},
    }
    params = tiny_maf_params(dropout=0.0, attn_dropout=0.0)
    artifact, _ = train_model(
        data["train_sequences"], data["valid_sequences"], data["item_index"],
        feats["image"], feats["text"], feats["category"], params, training, 6, 0,
    )  # fmt: skip
    seqs = (data["train_sequences"], data["valid_sequences"], data["test_sequences"])
    eval_params = {**PARAMS, "ks": [10, 20]}
    metrics, per_user = evaluate_model(
        artifact, *seqs, feats["image"], feats["text"], feats["category"], eval_params, 0
    )
    pop, _ = evaluate_popularity(*seqs, data["item_index"], eval_params, 0)
    assert metrics["architecture"] == "maf" and metrics["best_epoch"] >= 1
    assert len(per_user) == 2 * len(data["test_sequences"])
    assert set(per_user["split"]) == {"valid", "test"}
    assert (per_user["rank"] >= 1).all() and (per_user["rank"] <= 30).all()
    assert metrics["test"]["ndcg@10"] > pop["test"]["ndcg@10"] + 0.3


def test_pipelines_are_namespaced_per_model() -> None:
    pipe = create_model_pipeline("sasrec")
    assert pipe.outputs() == {"sasrec.metrics", "sasrec.per_user_results"}
    assert {"sasrec.trained_model", "params:evaluation", "params:seed", "test_sequences"} <= pipe.inputs()
    full = create_pipeline()
    assert {"maf.metrics", "maf.per_user_results", "pop.metrics", "pop.per_user_results"} == full.outputs()


def test_catalog_factories_resolve_for_any_model_name() -> None:
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    conf = OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env="local")
    catalog = DataCatalog.from_config(conf["catalog"])
    for name in ("maf", "sasrec"):
        trained = catalog.get(f"{name}.trained_model")
        assert type(trained).__name__ == "SafetensorsDataset"
        assert f"06_models/{name}/model.safetensors" in str(trained._describe()["filepath"])
        assert type(catalog.get(f"{name}.metrics")).__name__ == "JSONDataset"
        assert type(catalog.get(f"{name}.training_history")).__name__ == "JSONDataset"
        assert type(catalog.get(f"{name}.per_user_results")).__name__ == "ParquetDataset"
    params = conf["parameters"]
    assert params["maf"]["model"]["architecture"] == "maf"
    assert {"epochs", "batch_size", "learning_rate", "early_stopping", "checkpoint_dir"} <= set(
        params["training"]
    )
    assert params["evaluation"]["protocol"] == "full" and params["evaluation"]["mask_history"] is False
