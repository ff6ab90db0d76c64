"""Per-item encoding cache: re-runs encode nothing, new items only new ones, changed content again."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from maf_pipeline.parameters import filled
from maf_pipeline.pipelines.features import nodes
from maf_pipeline.pipelines.features.nodes import encode_texts
from maf_pipeline.pipelines.features.stores import CacheTable, FeatureCache, settings_hash

TEXTS = {
    "a": "leather ankle boots",
    "b": "wool scarf, grey",
    "c": "running shoes with mesh upper",
    "d": "silver hoop earrings",
    "e": "denim jacket",
}


def _frames(ids: list[str], texts: dict[str, str] = TEXTS) -> tuple[pd.DataFrame, pd.DataFrame]:
    index = pd.DataFrame({"item_idx": range(1, len(ids) + 1), "item_id": ids})
    items = pd.DataFrame(
        {"item_id": list(texts), "title": list(texts.values()), "text": list(texts.values())}
    )
    return index, items


@pytest.fixture
def cfg(params, tiny_bert_dir) -> dict:
    """Text encoder settings using the tiny local BERT."""
    return {**params["text_encoder"], "weights": str(tiny_bert_dir)}


def test_second_run_encodes_nothing_and_gives_the_same_table(cfg, params, tmp_path):
    cache = FeatureCache(str(tmp_path / "cache"))
    index, items = _frames(["a", "b", "c"])
    first = encode_texts(index, items, cache, cfg, params["cache"], 0)
    second = encode_texts(index, items, cache, cfg, params["cache"], 0)
    assert (first["__metadata__"]["encoded"], first["__metadata__"]["cache_hits"]) == (3, 0)
    assert (second["__metadata__"]["encoded"], second["__metadata__"]["cache_hits"]) == (0, 3)
    assert torch.equal(first["features"], second["features"])


def test_after_a_filter_change_only_new_items_are_encoded(cfg, params, tmp_path):
    cache = FeatureCache(str(tmp_path / "cache"))
    encode_texts(*_frames(["a", "b", "c"]), cache, cfg, params["cache"], 0)
    index, items = _frames(["c", "d", "a", "e"])  # b filtered out, d and e new, order (item_idx) changed
    out = encode_texts(index, items, cache, cfg, params["cache"], 0)
    assert (out["__metadata__"]["encoded"], out["__metadata__"]["cache_hits"]) == (2, 2)
    fresh = encode_texts(index, items, FeatureCache(str(tmp_path / "fresh")), cfg, params["cache"], 0)
    assert torch.allclose(out["features"], fresh["features"], atol=1e-6)  # rows land at their new item_idx


def test_changed_text_or_settings_are_not_served_from_the_cache(cfg, params, tmp_path):
    cache = FeatureCache(str(tmp_path / "cache"))
    index, items = _frames(["a", "b"])
    encode_texts(index, items, cache, cfg, params["cache"], 0)
    edited = {**TEXTS, "b": "wool scarf, red"}
    out = encode_texts(*_frames(["a", "b"], edited), cache, cfg, params["cache"], 0)
    assert (out["__metadata__"]["encoded"], out["__metadata__"]["cache_hits"]) == (1, 1)

    mean = encode_texts(index, items, cache, {**cfg, "pooling": "mean"}, params["cache"], 0)
    assert mean["__metadata__"]["encoded"] == 2
    assert mean["__metadata__"]["settings_hash"] != out["__metadata__"]["settings_hash"]
    back = encode_texts(
        index, items, cache, cfg, params["cache"], 0
    )  # the old settings' table is still there
    assert back["__metadata__"]["encoded"] == 0


def test_disabled_cache_writes_nothing(cfg, params, tmp_path):
    cache = FeatureCache(str(tmp_path / "cache"))
    off = {**params["cache"], "enabled": False}
    encode_texts(*_frames(["a", "b"]), cache, cfg, off, 0)
    out = encode_texts(*_frames(["a", "b"]), cache, cfg, off, 0)
    assert out["__metadata__"]["encoded"] == 2
    assert not (tmp_path / "cache").exists()


def test_interrupted_encoding_keeps_finished_shards(cfg, params, tmp_path, monkeypatch):
    cache = FeatureCache(str(tmp_path / "cache"))
    index, items = _frames(list(TEXTS))
    cfg = {**cfg, "batch_size": 1}
    real_pool = nodes.pool
    calls = {"n": 0}

    def crash_on_the_fourth_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("killed")
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(nodes, "pool", crash_on_the_fourth_batch)
    with pytest.raises(RuntimeError, match="killed"):
        encode_texts(index, items, cache, cfg, filled("features.cache", {"flush_every": 2}), 0)
    monkeypatch.setattr(nodes, "pool", real_pool)
    out = encode_texts(index, items, cache, cfg, filled("features.cache", {"flush_every": 2}), 0)
    # batches 1-2 were flushed as a shard, batch 3 when batch 4 failed: only batches 4 and 5 are redone
    assert (out["__metadata__"]["cache_hits"], out["__metadata__"]["encoded"]) == (3, 2)
    assert len(list((tmp_path / "cache" / "text").glob("*/shard-*.safetensors"))) == 3


def test_cache_table_keys_rows_by_item_and_content(tmp_path):
    table = FeatureCache(str(tmp_path)).table("text", {"model": "m", "pooling": "cls"})
    assert isinstance(table, CacheTable) and table.directory.name == settings_hash(
        {"pooling": "cls", "model": "m"}
    )
    assert (table.directory / "settings.json").exists()
    table.append(["x", "y"], ["fx", "fy"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    table.append(["y", "x"], ["fy2", "fx"], torch.tensor([[5.0, 6.0], [7.0, 8.0]]))
    hits = table.lookup(["x", "y", "z"], ["fx", "fy2", "fz"])
    assert set(hits) == {"x", "y"} and hits["y"].tolist() == [5.0, 6.0]
    assert hits["x"].tolist() == [7.0, 8.0]  # same item and content written twice: the later shard wins
    assert table.lookup(["y"], ["fy"])["y"].tolist() == [3.0, 4.0]  # each content version is kept
    assert table.lookup(["y"], ["other"]) == {}  # unseen content: a miss
    assert len(table) == 3
    with pytest.raises(ValueError):
        table.append(["a"], ["f1", "f2"], torch.zeros(1, 2))
