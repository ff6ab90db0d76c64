"""The features pipeline run by Kedro's runner on tiny data: wiring, artifacts on disk, cache across runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import ParquetDataset

from maf_pipeline.datasets import EmbeddingFileDataset, SafetensorsDataset
from maf_pipeline.pipelines.features import create_pipeline
from maf_pipeline.pipelines.features.stores import FeatureCacheDataset, ImageFolderDataset

from .conftest import jpeg_bytes

ITEMS = pd.DataFrame(
    {
        "item_id": ["A", "B", "C", "D"],
        "title": ["red boots", "blue scarf", "hoop earrings", "denim jacket"],
        "text": ["red boots, leather", "blue scarf, wool", "hoop earrings, silver", "denim jacket, washed"],
        "categories": [
            ["CSJ", "Women", "Shoes"],
            ["CSJ", "Women"],
            ["CSJ", "Women", "Jewelry"],
            ["CSJ", "Men"],
        ],
        "image_urls": [[], [], [], []],
        "brand": ["", "", "", ""],
    }
)


def test_wiring_follows_the_data_contract():
    pipe = create_pipeline()
    assert {n.name for n in pipe.nodes} == {
        "list_image_candidates",
        "acquire_images",
        "encode_images",
        "encode_texts",
        "encode_categories",
        "build_features_manifest",
    }
    outputs = {n.name: set(n.outputs) for n in pipe.nodes}
    assert outputs["list_image_candidates"] == {"image_candidates"}
    assert outputs["acquire_images"] == {"image_availability", "image_acquisition_report"}
    assert outputs["encode_categories"] == {"category_features", "category_vocabulary"}
    assert pipe.only_nodes("encode_texts").all_outputs() == {"text_features"}  # --nodes=encode_texts
    free = {i for i in pipe.inputs() if not i.startswith("params:")}
    assert free == {
        "deduplicated_interactions",
        "candidate_kcore_interactions",
        "items",
        "local_images",
        "image_store",
        "item_index",
        "filtered_items",
        "feature_cache",
        "image_embeddings",  # precomputed vectors, used when a modality's source is `file`
        "text_embeddings",
    }


def _catalog(tmp: Path, item_ids: list[str], params: dict) -> DataCatalog:
    index = pd.DataFrame({"item_idx": range(1, len(item_ids) + 1), "item_id": item_ids})
    datasets = {
        "deduplicated_interactions": MemoryDataset(pd.DataFrame({"user_id": "u", "item_id": item_ids})),
        "candidate_kcore_interactions": MemoryDataset(pd.DataFrame({"user_id": "u", "item_id": item_ids})),
        "image_candidates": MemoryDataset(),
        "image_acquisition_report": MemoryDataset(),
        "items": MemoryDataset(ITEMS),
        "filtered_items": MemoryDataset(ITEMS[ITEMS["item_id"].isin(item_ids)]),
        "item_index": MemoryDataset(index),
        "local_images": ImageFolderDataset(str(tmp / "raw_images")),
        "image_store": ImageFolderDataset(str(tmp / "store"), writable=True),
        "feature_cache": FeatureCacheDataset(str(tmp / "cache")),
        "image_availability": ParquetDataset(filepath=str(tmp / "image_availability.parquet")),
        "category_vocabulary": JSONDataset(filepath=str(tmp / "category_vocabulary.json")),
        "features_manifest": JSONDataset(filepath=str(tmp / "features_manifest.json")),
        "params:seed": MemoryDataset(42),
        "image_embeddings": EmbeddingFileDataset(None),
        "text_embeddings": EmbeddingFileDataset(None),
        "params:features.images.source": MemoryDataset(params["images"]["source"]),
    }
    for name in ("image", "text", "category"):
        datasets[f"{name}_features"] = SafetensorsDataset(str(tmp / f"{name}_features.safetensors"))
    for key in ("images", "image_encoder", "text_encoder", "categories", "cache"):
        datasets[f"params:features.{key}"] = MemoryDataset(params[key])
    return DataCatalog(datasets)


@pytest.mark.slow
def test_pipeline_runs_and_reuses_the_cache(vgg16_checkpoint, tiny_bert_dir, params, tmp_path):
    raw = tmp_path / "raw_images"
    raw.mkdir()
    for seed, item_id in enumerate(["A", "B", "D"]):  # C has no image
        (raw / f"{item_id}.jpg").write_bytes(jpeg_bytes(seed))
    params["image_encoder"]["weights"] = str(vgg16_checkpoint)
    params["text_encoder"]["weights"] = str(tiny_bert_dir)
    runner = SequentialRunner()

    runner.run(create_pipeline(), _catalog(tmp_path, ["A", "B", "C"], params))
    availability = pd.read_parquet(tmp_path / "image_availability.parquet")
    assert availability.set_index("item_id")["has_image"].to_dict() == {"A": True, "B": True, "C": False}
    image = SafetensorsDataset(str(tmp_path / "image_features.safetensors")).load()
    text = SafetensorsDataset(str(tmp_path / "text_features.safetensors")).load()
    cats = SafetensorsDataset(str(tmp_path / "category_features.safetensors")).load()
    assert image["features"].shape == (4, 4096) and not image["features"][3].any()  # C: zero row
    assert text["features"].shape == (4, 32) and cats["features"].shape == (4, 2)  # Women is universal here
    assert image["__metadata__"]["encoded"] == 2 and image["__metadata__"]["missing"] == 1
    manifest = JSONDataset(filepath=str(tmp_path / "features_manifest.json")).load()
    assert manifest["modalities"]["text"]["dim"] == 32 and manifest["modalities"]["image"]["missing"] == 1
    assert manifest["image_availability"]["with_image"] == 2

    # a filter change: C dropped, D added — only D is encoded, A and B come from the cache
    runner.run(create_pipeline(), _catalog(tmp_path, ["B", "D", "A"], params))
    image2 = SafetensorsDataset(str(tmp_path / "image_features.safetensors")).load()
    text2 = SafetensorsDataset(str(tmp_path / "text_features.safetensors")).load()
    for table in (image2, text2):
        assert (table["__metadata__"]["cache_hits"], table["__metadata__"]["encoded"]) == (2, 1)
    assert torch.equal(image2["features"][3], image["features"][1])  # A moved from item_idx 1 to 3
    assert torch.equal(text2["features"][1], text["features"][2])  # B moved from item_idx 2 to 1
