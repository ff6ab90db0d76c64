"""Recommendations: the top-k of the model's own scores, seen items left out, unknown users and items reported
instead of crashing, and the same model loaded outside Kedro from the project's catalog."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog

from maf_pipeline.inference import Recommender, load_model, top_k, user_histories
from maf_pipeline.metrics import pad_right
from maf_pipeline.pipelines.recommend import create_pipeline
from maf_pipeline.pipelines.recommend.nodes import recommend_top_k
from tests.models.synthetic import make_features, make_sequences
from tests.pipelines.reporting.test_reporting import NUM_ITEMS, tiny_artifact

ROOT = Path(__file__).resolve().parents[3]
PARAMS = {"k": 5, "users": None, "exclude_seen": True, "batch_size": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    seqs = make_sequences(num_users=10, num_items=NUM_ITEMS, length=(4, 14), seed=5)
    # one user kept for training only (too short for validation/test)
    seqs["train_sequences"].loc[len(seqs["train_sequences"])] = [10, np.array([3, 4], dtype=np.int64)]
    users = seqs["train_sequences"]["user_idx"]
    seqs["user_index"] = pd.DataFrame({"user_idx": users, "user_id": [f"U{u:02d}" for u in users]})
    ids = seqs["item_index"]["item_id"]
    seqs["filtered_items"] = pd.DataFrame({"item_id": ids, "title": [f"title of {i}" for i in ids]})
    seqs["features"] = make_features(NUM_ITEMS, seed=2)
    seqs["artifact"] = tiny_artifact(seqs["features"], max_len=8)
    return seqs


def run(data: dict[str, Any], **params: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    f = data["features"]
    return recommend_top_k(
        data["artifact"], data["train_sequences"], data["valid_sequences"], data["test_sequences"],
        data["user_index"], data["item_index"], data["filtered_items"], f["image"], f["text"], f["category"],
        {**PARAMS, **params},
    )  # fmt: skip


def test_user_histories_append_valid_and_test_targets(data: dict[str, Any]) -> None:
    hist = user_histories(data["train_sequences"], data["valid_sequences"], data["test_sequences"])
    test = data["test_sequences"].set_index("user_idx")
    for user, row in test.iterrows():
        # the test history is the sequence before the last item: with the target it is the whole tail
        whole = np.append(row["history"], row["target"])
        np.testing.assert_array_equal(hist[user][-len(whole) :], whole)
    np.testing.assert_array_equal(hist[10], [3, 4])  # training-only user: no targets


def test_recommendations_are_the_top_scores_of_unseen_items(data: dict[str, Any]) -> None:
    frame, report = run(data)
    assert list(frame.columns) == ["user_id", "rank", "item_id", "title", "score"]
    assert frame["user_id"].nunique() == 11 and len(frame) == 11 * 5
    assert report["recommended_users"] == 11 and report["unknown_users"] == []
    hist = user_histories(data["train_sequences"], data["valid_sequences"], data["test_sequences"])
    model = load_model(data["artifact"], {k: v["features"] for k, v in data["features"].items()})
    idx_of = dict(zip(data["item_index"]["item_id"], data["item_index"]["item_idx"], strict=True))
    for user_id, rows in frame.groupby("user_id"):
        user = int(user_id[1:])
        with torch.no_grad():
            scores = model.full_sort_scores(torch.from_numpy(pad_right([hist[user]], 8)))[0].numpy()
        scores[hist[user]] = -np.inf  # seen items are excluded
        expected = np.argsort(-scores, kind="stable")[:5]
        got = [idx_of[i] for i in rows.sort_values("rank")["item_id"]]
        assert got == list(expected), user_id
        np.testing.assert_allclose(rows["score"], scores[expected], rtol=1e-5)
        assert not set(got) & set(hist[user].tolist())
        assert list(rows["rank"]) == [1, 2, 3, 4, 5]
    assert (frame["title"] == "title of " + frame["item_id"]).all()


def test_seen_items_can_be_recommended_when_asked(data: dict[str, Any]) -> None:
    frame, _ = run(data, exclude_seen=False, k=NUM_ITEMS)
    hist = user_histories(data["train_sequences"], data["valid_sequences"], data["test_sequences"])
    per_user = frame.groupby("user_id")["item_id"].apply(set)
    assert all(len(items) == NUM_ITEMS for items in per_user)  # every item, seen ones included
    assert {f"i{i}" for i in hist[0]} <= per_user["U00"]


def test_unknown_users_are_listed_not_fatal(data: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    frame, report = run(data, users=["U03", "ghost", "U01", "U03", "nobody"])
    assert list(dict.fromkeys(frame["user_id"])) == ["U03", "U01"]  # requested order, duplicates once
    assert report["unknown_users"] == ["ghost", "nobody"] and report["num_unknown_users"] == 2
    assert report["requested_users"] == 4 and report["recommended_users"] == 2
    assert "2 of 4 requested users are unknown" in caplog.text and "ghost" in caplog.text
    empty, report = run(data, users=["ghost"])
    assert empty.empty and list(empty.columns) == ["user_id", "rank", "item_id", "title", "score"]
    assert report["recommended_users"] == 0
    one, _ = run(data, users="U02")  # a string of ids separated by spaces, as `kedro run --params` gives it
    assert set(one["user_id"]) == {"U02"}
    two, report = run(data, users=" U04  ghost U02")
    assert list(dict.fromkeys(two["user_id"])) == ["U04", "U02"] and report["unknown_users"] == ["ghost"]


def test_top_k_leaves_empty_slots_when_candidates_run_out(data: dict[str, Any]) -> None:
    model = load_model(data["artifact"], {k: v["features"] for k, v in data["features"].items()})
    everything = np.arange(1, NUM_ITEMS + 1)
    items, scores = top_k(model, [everything[:-2], np.array([1])], k=4)
    assert set(items[0]) == {NUM_ITEMS - 1, NUM_ITEMS, 0} and (items[0, 2:] == 0).all()
    assert np.isneginf(scores[0, 2:]).all() and (items[1] > 1).all()


def test_pipeline_is_namespaced_and_in_the_catalog() -> None:
    pipe = create_pipeline()
    assert [n.name for n in pipe.nodes] == ["maf.recommend_top_k"]
    assert "maf.trained_model" in pipe.inputs() and "params:recommend" in pipe.inputs()
    assert pipe.outputs() == {"maf.recommendations", "maf.recommendation_report"}
    loader = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="base")
    catalog = DataCatalog.from_config(dict(loader["catalog"]))
    assert str(catalog.get("maf.recommendations")._filepath).endswith(
        "07_model_output/maf/recommendations.parquet"
    )
    assert loader["parameters"]["recommend"]["users"] is None


def test_recommender_loads_outside_kedro_from_the_project_catalog(
    data: dict[str, Any], tmp_path: Path
) -> None:
    """Write the artifacts where the project's catalog puts them (in a copy), then load them in one line."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    catalog = DataCatalog.from_config(
        {
            name: {**entry, "filepath": str(tmp_path / entry["filepath"])}
            for name, entry in OmegaConfigLoader(
                str(tmp_path / "conf"), base_env="base", default_run_env="base"
            )["catalog"].items()
            if entry.get("filepath")  # not the optional inputs without a file (image/text_embeddings)
        }
    )
    catalog.save("maf.trained_model", data["artifact"])
    catalog.save("item_index", data["item_index"])
    catalog.save("filtered_items", data["filtered_items"])
    for name in ("image", "text", "category"):
        catalog.save(f"{name}_features", data["features"][name])

    rec = Recommender.from_project(tmp_path, model="maf")
    query = ["i3", "i4", "i5", "unknown-asin"]
    out = rec.recommend(query, k=4)
    assert list(out.columns) == ["rank", "item_id", "title", "score"] and len(out) == 4
    assert not set(out["item_id"]) & {"i3", "i4", "i5"}
    assert out["score"].is_monotonic_decreasing
    items, _ = top_k(rec.model, [np.array([3, 4, 5])], k=4)  # same as scoring the known ids directly
    assert list(out["item_id"]) == [f"i{i}" for i in items[0]]
    with pytest.raises(ValueError, match="none of the 2 item ids"):
        rec.recommend(["nope", "nada"])


@pytest.mark.slow
def test_sample_run_recommends_k_unseen_items_to_every_user(full_run) -> None:
    project, _ = full_run
    recs = pd.read_parquet(project / "data/07_model_output/maf/recommendations.parquet")
    users = pd.read_parquet(project / "data/05_model_input/user_index.parquet")
    interactions = pd.read_parquet(project / "data/03_primary/kcore_interactions.parquet")
    assert set(recs["user_id"]) == set(users["user_id"])
    assert (recs.groupby("user_id").size() == 10).all()
    seen = set(zip(interactions["user_id"], interactions["item_id"], strict=True))
    assert not any((u, i) in seen for u, i in zip(recs["user_id"], recs["item_id"], strict=True))
    assert recs["title"].str.len().gt(0).mean() > 0.9
