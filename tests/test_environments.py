"""The shipped environments `scientific` and `scientific_mm`, end to end on a small cut the test writes.

The environments read ``../shared/data/unisrec-scientific`` and ``../shared/data/scientific-mm`` relative to
the project; here the project copy sits beside a ``shared/`` folder of made-up files in the same layout
(RecBole's pre-split benchmark files, id maps, item text, raw float32 CLIP-like vectors), so the catalog
entries under test are the shipped ones, unchanged.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from maf_pipeline.datasets import SafetensorsDataset
from tests.benchmark_files import make_sequences, write_split
from tests.conftest import copy_project, kedro

TINY_MODEL = {
    "training.epochs": 2,
    "training.early_stopping.patience": "null",
    "training.num_threads": 1,
    "maf.model.d": 16,
    "maf.model.d_mm": 8,
    "maf.model.d_ff": 32,
}


def _maps(path: Path) -> dict[str, str]:
    return {i: raw for raw, i in (line.split("\t") for line in path.read_text().splitlines())}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("envs")
    data = root / "shared" / "data"
    full = write_split(data / "unisrec-scientific", make_sequences(90, 48, seed=1), 48, dim=None)
    mm_sequences = make_sequences(70, 40, seed=2)
    mm = write_split(data / "scientific-mm", mm_sequences, 40, dim=512, seed=5)  # CLIP width, as declared
    return {"project": copy_project(root / "project"), "full": full, "mm": mm}


def _check_split(out: Path, paths: dict[str, Path]) -> None:
    items, users = _maps(paths["item2index"]), _maps(paths["user2index"])
    item_index = pd.read_parquet(out / "05_model_input" / "item_index.parquet")
    user_index = pd.read_parquet(out / "05_model_input" / "user_index.parquet")
    item_of = dict(zip(item_index["item_idx"], item_index["item_id"], strict=True))
    user_of = dict(zip(user_index["user_idx"], user_index["user_id"], strict=True))
    assert len(item_index) == len(set(items.values()) & set(item_of.values()))
    test = pd.read_parquet(out / "05_model_input" / "test_sequences.parquet")
    expected = {}
    for line in paths["test"].read_text().splitlines()[1:]:
        u, history, target = line.split("\t")
        expected[users[u]] = ([items[i] for i in history.split()], items[target])
    got = {
        user_of[u]: ([item_of[i] for i in h], item_of[t])
        for u, h, t in zip(test["user_idx"], test["history"], test["target"], strict=True)
    }
    assert got == expected


@pytest.mark.slow
def test_scientific_full_run_recommends_raw_asins(layout, mlflow_dir) -> None:
    project = layout["project"]
    kedro(project, "run", "--env=scientific", "--pipelines=full", params=TINY_MODEL)
    out = project / "data" / "scientific"
    _check_split(out, layout["full"])
    text = SafetensorsDataset(str(out / "04_feature" / "text_features.safetensors")).load()
    feats = text["features"]
    assert feats.shape[1] == 384 and not feats[0].any() and bool((feats[1:].abs().sum(1) > 0).all())
    metrics = (out / "08_reporting" / "maf" / "metrics.json").read_text()
    assert '"mask_history": true' in metrics and '"ndcg@50"' in metrics
    recs = pd.read_parquet(out / "07_model_output" / "maf" / "recommendations.parquet")
    asins = set(_maps(layout["full"]["item2index"]).values())
    assert set(recs["item_id"]) <= asins and recs["user_id"].str.startswith("A").all()
    assert not (project / "data" / "02_intermediate" / "interactions.parquet").exists()  # its own data_dir
    mlflow.set_tracking_uri(f"sqlite:///{mlflow_dir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["maf_pipeline"], order_by=["start_time DESC"])
    model = mlflow.pyfunc.load_model(f"runs:/{runs['run_id'].iloc[0]}/model")
    user = recs["user_id"].iloc[0]
    answer = model.predict(pd.DataFrame({"user_id": [user]}), params={"k": 5})
    assert len(answer) == 5 and set(answer["item_id"]) <= asins


@pytest.mark.slow
def test_scientific_mm_features_are_the_files_rows_and_compare_runs(layout) -> None:
    project = layout["project"]
    kedro(
        project,
        "run",
        "--env=scientific_mm",
        "--to-outputs=item_index,test_sequences,image_features,text_features",
    )
    out = project / "data" / "scientific_mm"
    _check_split(out, layout["mm"])
    item_index = pd.read_parquet(out / "05_model_input" / "item_index.parquet")
    rows = {raw: int(i) for i, raw in _maps(layout["mm"]["item2index"]).items()}
    for name, suffix in (("image", "feat3CLS"), ("text", "feat1CLS")):
        table = SafetensorsDataset(str(out / "04_feature" / f"{name}_features.safetensors")).load()
        feats = table["features"].numpy()
        raw = np.fromfile(layout["mm"][suffix], dtype="<f4").reshape(-1, 512)
        assert feats.shape == (len(item_index) + 1, 512) and not feats[0].any()
        for idx, item in zip(item_index["item_idx"], item_index["item_id"], strict=True):
            np.testing.assert_array_equal(feats[idx], raw[rows[item]])
        assert table["__metadata__"]["source"]["file"].endswith(suffix)
    # lists cannot go through --params (its items are comma-separated): edit the copy's environment
    conf = project / "conf" / "scientific_mm" / "parameters.yml"
    params = yaml.safe_load(conf.read_text())
    params["compare"].update(
        models=["pop", "sasrec", "maf"],
        seeds=[7],
        training={"epochs": 2, "num_threads": 1, "early_stopping": {"patience": None}},
    )
    params["sasrec"]["model"].update(d=16, d_ff=32)
    conf.write_text(yaml.safe_dump(params))
    kedro(project, "run", "--env=scientific_mm", "--pipelines=compare", params=TINY_MODEL)
    table2 = pd.read_csv(out / "08_reporting" / "compare" / "table2.csv")
    assert {"pop", "sasrec", "maf"} <= set(table2["column"]) and "ndcg@50" in set(table2["metric"])
    figure3 = pd.read_csv(out / "08_reporting" / "compare" / "figure3.csv")
    assert {"Image", "Text", "All"} <= set(figure3["column"])
