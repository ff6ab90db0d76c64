"""Reporting nodes: attention maps are real softmax rows of the model, plots are non-trivial PNGs, and the
pipeline's outputs are catalog datasets in the reporting layer."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog
from kedro_datasets.matplotlib import MatplotlibDataset
from PIL import Image

from maf_pipeline.models import build_model
from maf_pipeline.pipelines.reporting import create_pipeline
from maf_pipeline.pipelines.reporting.nodes import (
    check_attention_rows,
    compute_attention_maps,
    plot_attention_maps,
    plot_dataset_statistics,
    plot_sequence_lengths,
    plot_training_curves,
)
from tests.models.synthetic import make_features, make_sequences, tiny_maf_params

ROOT = Path(__file__).resolve().parents[3]
NUM_ITEMS = 30


_ARTIFACTS: dict[tuple, dict[str, Any]] = {}


def tiny_artifact(features: dict[str, dict], max_len: int = 20, **overrides: Any) -> dict[str, Any]:
    """A ``<model>.trained_model`` artifact of a randomly initialised tiny MAF (as training writes it)."""
    key = (id(features), max_len, tuple(sorted(overrides.items())))
    if key not in _ARTIFACTS:
        _ARTIFACTS[key] = _build_artifact(features, max_len, **overrides)
    return _ARTIFACTS[key]


def _build_artifact(features: dict[str, dict], max_len: int, **overrides: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    params = tiny_maf_params(**overrides)
    tables = {k: v["features"] for k, v in features.items()}
    model = build_model("maf", NUM_ITEMS, max_len, params, tables)
    artifact: dict[str, Any] = {k: v.clone() for k, v in model.state_dict().items()}
    artifact["__metadata__"] = {
        "architecture": "maf",
        "config": params,
        "num_items": NUM_ITEMS,
        "max_len": max_len,
        "best_epoch": 1,
        "seed": 0,
        "feature_dims": {k: int(v.shape[1]) for k, v in tables.items() if k in params["modalities"]},
    }
    return artifact


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    seqs = make_sequences(num_users=12, num_items=NUM_ITEMS, length=(6, 24), seed=3)
    users = seqs["train_sequences"]["user_idx"]
    seqs["user_index"] = pd.DataFrame({"user_idx": users, "user_id": [f"U{u:02d}" for u in users]})
    seqs["filtered_items"] = pd.DataFrame(
        {
            "item_id": seqs["item_index"]["item_id"],
            "title": [f"title {i}" for i in seqs["item_index"]["item_idx"]],
        }
    )
    seqs["features"] = make_features(NUM_ITEMS, seed=1)
    return seqs


def attention(
    data: dict[str, Any], params: dict[str, Any], seed: int = 7, max_len: int = 20, **model: Any
) -> dict[str, Any]:
    f = data["features"]
    return compute_attention_maps(
        tiny_artifact(f, max_len, **model), data["test_sequences"], data["user_index"], data["item_index"],
        data["filtered_items"], f["image"], f["text"], f["category"], params, seed,
    )  # fmt: skip


def png_bytes(fig, tmp_path: Path, name: str) -> bytes:
    """Save through the catalog's matplotlib dataset (as the pipeline does) and return the file's bytes."""
    path = tmp_path / f"{name}.png"
    MatplotlibDataset(filepath=str(path), save_args={"dpi": 80}).save(fig)
    return path.read_bytes()


def assert_nontrivial_png(raw: bytes, min_bytes: int = 8_000) -> None:
    assert len(raw) > min_bytes
    pixels = np.asarray(Image.open(io.BytesIO(raw)).convert("L"), dtype=np.float64)
    assert pixels.std() > 10  # not a blank canvas


@pytest.mark.parametrize("fusion", ["sum", "gate"])
def test_attention_maps_are_the_models_softmax_rows(data: dict[str, Any], fusion: str) -> None:
    params = {"positions": 15, "layer": -1, "head": "mean", "user": None}
    out = attention(data, params, fusion=fusion)
    assert set(out["maps"]) == {"item", "multimodal", "fused"}
    assert out["layer"] == 1 and out["num_layers"] == 2
    for name, matrix in out["maps"].items():
        m = np.asarray(matrix)
        assert m.shape == (15, 15), name
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)  # rows sum to 1 before plotting
        assert np.abs(np.triu(m, k=1)).max() == 0.0  # causal: nothing on later positions
        assert m[0, 0] == pytest.approx(1.0)
    # the positions are the sampled user's 15 most recent test-history items, with their ids and titles
    row = data["test_sequences"].set_index("user_idx").loc[out["user_idx"]]
    assert [i["item_idx"] for i in out["items"]] == list(np.asarray(row["history"])[-15:])
    assert out["items"][0]["title"] == f"title {out['items'][0]['item_idx']}"
    assert out["user_id"] == f"U{out['user_idx']:02d}"
    # the maps differ from each other: the multimodal scores are not the item-ID scores
    assert not np.allclose(out["maps"]["item"], out["maps"]["multimodal"])


def test_attention_user_sampling_is_seeded_and_respects_the_parameters(data: dict[str, Any]) -> None:
    params = {"positions": 15, "layer": 0, "head": 1, "user": None}
    a, b = attention(data, params, seed=1), attention(data, params, seed=1)
    assert a["user_id"] == b["user_id"] and a["maps"] == b["maps"]
    picked = {attention(data, params, seed=s)["user_id"] for s in range(6)}
    eligible = data["test_sequences"]["history"].map(len) >= 15
    assert 1 < len(picked) <= eligible.sum()  # the seed moves the choice among eligible users only
    assert a["layer"] == 0 and a["head"] == 1
    chosen = attention(data, {**params, "user": "U03"})
    assert chosen["user_id"] == "U03" and len(chosen["items"]) == min(
        15, len(data["test_sequences"].set_index("user_idx").loc[3, "history"])
    )
    with pytest.raises(ValueError, match="no test sequence"):
        attention(data, {**params, "user": "nobody"})


def test_positions_are_capped_by_the_window_and_the_longest_history(data: dict[str, Any]) -> None:
    params = {"positions": 500, "layer": -1, "head": "mean", "user": None}
    assert len(attention(data, params, max_len=20)["items"]) == 20  # the model reads at most max_len items
    longest = data["test_sequences"]["history"].map(len).max()
    assert longest < 40
    out = attention(data, params, max_len=40)  # no history that long: the longest one
    assert len(out["items"]) == longest
    check_attention_rows(out)


def test_check_attention_rows_rejects_broken_maps() -> None:
    good = np.tril(np.ones((4, 4)))
    good /= good.sum(axis=1, keepdims=True)
    check_attention_rows({"maps": {"item": good.tolist()}})
    with pytest.raises(ValueError, match="sum to 1"):
        check_attention_rows({"maps": {"item": (good * 0.9).tolist()}})
    future = np.full((4, 4), 0.25)
    with pytest.raises(ValueError, match="future"):
        check_attention_rows({"maps": {"item": future.tolist()}})
    with pytest.raises(ValueError, match="square"):
        check_attention_rows({"maps": {"item": good[:3].tolist()}})


def test_attention_plot_has_three_heat_maps(data: dict[str, Any], tmp_path: Path) -> None:
    out = attention(data, {"positions": 15, "layer": -1, "head": "mean", "user": None})
    fig = plot_attention_maps(out)
    heat = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in heat] == ["item attention", "multimodal attention", "fused attention"]
    assert heat[0].images[0].get_array().shape == (15, 15)
    assert_nontrivial_png(png_bytes(fig, tmp_path, "attention"))
    broken = {**out, "maps": {**out["maps"], "fused": (np.asarray(out["maps"]["fused"]) * 2).tolist()}}
    with pytest.raises(ValueError, match="sum to 1"):
        plot_attention_maps(broken)


def history(epochs: int = 6) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    rows = [
        {
            "epoch": e,
            "loss": {"id": 5.0 / e, "image": 0.1 / e, "loss": 5.0 / e + 1.0 / e},
            "valid": {
                "recall@10": 0.1 * e,
                "ndcg@10": 0.05 * e + rng.random() / 100,
                "mrr": 0.02,
                "num_users": 9,
            },
            "seconds": 1.0,
        }
        for e in range(1, epochs + 1)
    ]
    return {"epochs": rows, "best_epoch": 4, "architecture": "maf"}


def test_training_curves_plot_every_epoch(tmp_path: Path) -> None:
    fig = plot_training_curves(history(6))
    ax_loss, ax_valid = fig.axes
    assert {ln.get_label() for ln in ax_loss.lines} >= {"total", "L_id", "L_image", "best epoch 4"}
    valid_lines = {ln.get_label(): ln for ln in ax_valid.lines}
    assert set(valid_lines) == {"recall@10", "ndcg@10", "mrr", "best epoch 4"}  # num_users is not a metric
    np.testing.assert_allclose(valid_lines["recall@10"].get_ydata(), [0.1 * e for e in range(1, 7)])
    assert list(valid_lines["recall@10"].get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert_nontrivial_png(png_bytes(fig, tmp_path, "curves"))
    with pytest.raises(ValueError, match="no epochs"):
        plot_training_curves({"epochs": []})


STATS = {
    "dataset": "toy",
    "table1": {"users": 597, "items": 325, "avg_actions_per_user": 12.1, "avg_actions_per_item": 22.2,
               "interactions": 7221, "density": 0.0372},
    "first_interaction": "2016-01-01T00:00:00+00:00",
    "last_interaction": "2017-12-31T00:00:00+00:00",
    "input": {"interactions": 8229, "users": 646, "items": 342},
    "funnel": [
        {"stage": "date_window", "interactions": 8229, "users": 646, "items": 342, "removed_interactions": 0},
        {"stage": "kcore", "interactions": 7221, "users": 597, "items": 325, "removed_interactions": 1008},
    ],
}  # fmt: skip


def test_dataset_statistics_plot_shows_table_and_funnel(tmp_path: Path) -> None:
    fig = plot_dataset_statistics(STATS)
    ax_table, ax_funnel = fig.axes
    cells = {c.get_text().get_text() for c in ax_table.tables[0].get_celld().values()}
    assert {"#Users", "597", "#Interactions", "7,221", "2016-01-01"} <= cells
    heights = sorted(p.get_height() for p in ax_funnel.patches)
    assert len(heights) == 9 and heights[-1] == 8229 and heights[0] == 325  # 3 stages x 3 counts
    assert_nontrivial_png(png_bytes(fig, tmp_path, "stats"))


def test_sequence_length_histogram_counts_every_user(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 80, 300)
    users = np.repeat([f"u{i}" for i in range(300)], lengths)
    frame = pd.DataFrame({"user_id": users, "item_id": rng.integers(0, 50, len(users)).astype(str)})
    fig = plot_sequence_lengths(frame, max_len=50, bins=20)
    ax_user, ax_item = fig.axes
    assert sum(p.get_height() for p in ax_user.patches) == 300
    assert sum(p.get_height() for p in ax_item.patches) == frame["item_id"].nunique()
    cut = ((lengths - 1) > 50).mean()
    assert f"{cut:.1%} cut to max_len = 50" in ax_user.get_title()
    assert any(ln.get_label() == "longer than max_len = 50" for ln in ax_user.lines)
    assert_nontrivial_png(png_bytes(fig, tmp_path, "lengths"))


def test_pipeline_outputs_are_reporting_datasets_in_the_catalog() -> None:
    pipe = create_pipeline()
    assert {n.name for n in pipe.nodes} == {
        "plot_dataset_statistics", "plot_sequence_lengths", "maf.plot_training_curves",
        "maf.compute_attention_maps", "maf.plot_attention_maps",
    }  # fmt: skip
    assert all("reporting" in n.tags for n in pipe.nodes)
    assert {
        "maf.trained_model",
        "maf.training_history",
        "dataset_statistics",
        "kcore_interactions",
    } <= pipe.inputs()
    loader = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="base")
    catalog = DataCatalog.from_config(dict(loader["catalog"]))
    params = loader["parameters"]
    assert params["reporting"]["attention"]["positions"] == 15
    for name in pipe.outputs() | pipe.all_outputs():
        dataset = catalog.get(name)
        assert dataset is not None, f"{name} is not in the catalog"
        assert dataset.metadata["kedro-viz"]["layer"] == "reporting", name
    assert isinstance(catalog.get("maf.attention_maps_plot"), MatplotlibDataset)
    assert str(catalog.get("maf.training_curves")._filepath).endswith("08_reporting/maf/training_curves.png")


@pytest.mark.slow
def test_sample_run_writes_nontrivial_pngs_and_valid_attention_maps(full_run) -> None:
    project, _ = full_run
    reports = project / "data" / "08_reporting"
    for png in (
        "dataset_statistics.png",
        "sequence_lengths.png",
        "maf/training_curves.png",
        "maf/attention_maps.png",
    ):
        assert_nontrivial_png((reports / png).read_bytes(), min_bytes=20_000)
    attention_maps = json.loads((reports / "maf" / "attention_maps.json").read_text())
    check_attention_rows(attention_maps)  # rows sum to 1, causal
    assert set(attention_maps["maps"]) == {"item", "multimodal", "fused"}
    assert np.asarray(attention_maps["maps"]["fused"]).shape == (15, 15)  # sample users have >= 16 items
