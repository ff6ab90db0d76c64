"""End to end: `kedro run --pipeline=compare --tags=comparison` on the features of the shared sample run."""

from __future__ import annotations

import json
import shutil

import pandas as pd
from PIL import Image

from maf_pipeline.models import MODELS
from tests.conftest import kedro

# One seed and three epochs of every model: the reports, not the numbers, are under test here
# (the sample environment's own settings are measured in the README's compare section).
TINY = {
    "compare.seeds": "[7]",
    "compare.training.epochs": 3,
    "compare.training.early_stopping.patience": "null",
    "compare.training.num_threads": 1,
    "caser.model.nh": 4,
    "bert4rec.model.n_layers": 1,
    "sasrecf.model.n_layers": 1,
    "fdsa.model.n_layers": 1,
}


def test_compare_writes_every_report(full_run, tmp_path, monkeypatch) -> None:
    # A copy of the sample run, with its own MLflow store: the other tests of `full_run` see it untouched.
    project = shutil.copytree(full_run[0], tmp_path / "project")
    monkeypatch.setenv("MAF_MLFLOW_DIR", str(tmp_path / "mlflow"))
    kedro(project, "run", "--pipeline=compare", "--env=sample", "--tags=comparison", params=TINY, timeout=300)
    out = project / "data" / "08_reporting" / "compare"

    table2 = (out / "table2.md").read_text()
    for name in ("Pop", "GRU4Rec", "Caser", "SASRec", "BERT4Rec", "SASRecF", "FDSA", "MAF"):
        assert f"| {name} " in table2 or f" {name} |" in table2
    assert "*full*" in table2 and "*sampled*" in table2 and "**" in table2 and "<u>" in table2
    csv = pd.read_csv(out / "table2.csv")
    assert set(csv["column"]) == {"pop", *MODELS} and set(csv["protocol"]) == {"full", "sampled"}
    assert (csv.groupby(["protocol", "metric"])["rank"].min() == 1).all()
    test_full = csv[(csv["protocol"] == "full")].pivot(index="metric", columns="column", values="mean")
    assert (test_full["maf"] > test_full["pop"]).all() and (test_full["sasrec"] > test_full["pop"]).all()

    table3 = pd.read_csv(out / "table3.csv")
    assert set(table3["column"]) == {"Sum", "Concat", "Gate"}
    runs = {
        p.stem: pd.read_parquet(p)
        for p in (project / "data" / "07_model_output" / "compare").glob("*.parquet")
    }
    sum_rows = runs["fusion_runs"].query("variant == 'Sum'")["value"].to_numpy()
    assert (sum_rows == runs["maf_runs"]["value"].to_numpy()).all()  # the reference MAF is trained once
    table4 = (out / "table4.md").read_text()
    assert "% Improved" in table4 and "w/o MTL" in table4
    assert set(pd.read_csv(out / "figure3.csv")["column"]) == {"Image", "Text", "Category", "All"}
    with Image.open(out / "figure3.png") as png:
        assert png.size[0] > 400 and len(set(png.convert("L").getdata())) > 10
    assert json.loads((out / "grid_selection.json").read_text()) == {"enabled": False, "best": {}}
    assert "Disabled" in (out / "grid_search.md").read_text()
