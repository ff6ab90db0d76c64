"""compare reporting on hand-made runs: mean ± std, ranks, bold/underline, % improvement, figure, grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from maf_pipeline.parameters import filled
from maf_pipeline.pipelines.compare.nodes import empty_runs
from maf_pipeline.pipelines.compare.reporting import (
    build_figure3,
    build_grid_report,
    build_table2,
    build_table4,
    build_variant_table,
    metric_label,
    summarise,
)

EVALUATION = filled("evaluation")
COMPARE = filled(
    "compare",
    {"models": ["pop", "sasrec", "maf"], "protocols": ["full"], "metrics": ["recall@10", "ndcg@10"]},
)


def runs(
    variant: str, values: dict[str, list[float]], seeds=(1, 2), protocol="full", split="test"
) -> pd.DataFrame:
    """Rows of one variant: ``values[metric][i]`` for seed ``seeds[i]`` (seed None for a single pop run)."""
    rows = [
        {"variant": variant, "seed": seed, "protocol": protocol, "split": split, "metric": m, "value": v}
        for m, vs in values.items()
        for seed, v in zip(seeds, vs, strict=True)
    ]
    return pd.DataFrame(rows).reindex(columns=empty_runs().columns)


def table2_inputs() -> dict[str, pd.DataFrame]:
    return {
        "pop": runs("pop", {"recall@10": [0.05], "ndcg@10": [0.02]}, seeds=(None,)),
        "sasrec": runs("sasrec", {"recall@10": [0.30, 0.34], "ndcg@10": [0.20, 0.20]}),
        "maf": runs("maf", {"recall@10": [0.40, 0.42], "ndcg@10": [0.10, 0.12]}),
        "gru4rec": empty_runs(),  # not selected: not in compare.models, not shown
    }


def test_metric_labels() -> None:
    assert [metric_label(m) for m in ("recall@10", "ndcg@20", "mrr")] == ["Recall@10", "NDCG@20", "MRR"]


def test_summarise_mean_std_and_rank() -> None:
    table = summarise(pd.concat(table2_inputs().values()), ["pop", "sasrec", "maf"], ["recall@10", "ndcg@10"])
    row = table.set_index(["metric", "column"])
    assert row.loc[("recall@10", "maf"), "mean"] == pytest.approx(0.41)
    assert row.loc[("recall@10", "maf"), "std"] == pytest.approx(np.std([0.40, 0.42], ddof=1))
    assert row.loc[("recall@10", "pop"), "std"] == 0 and row.loc[("recall@10", "pop"), "n"] == 1
    assert row.loc[("recall@10", "maf"), "rank"] == 1 and row.loc[("ndcg@10", "sasrec"), "rank"] == 1
    assert table["column"].tolist()[:3] == ["pop", "sasrec", "maf"]  # display order kept
    valid_only = summarise(pd.concat(table2_inputs().values()), ["maf"], ["recall@10"], split="valid")
    assert valid_only.empty


def test_table2_marks_best_bold_and_second_underlined() -> None:
    text, csv = build_table2(COMPARE, EVALUATION, **table2_inputs())
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert lines["Metric"] == "| Metric | Pop | SASRec | MAF |"
    assert "**0.4100 ± 0.0141**" in lines["Recall@10"] and "<u>0.3200 ± 0.0283</u>" in lines["Recall@10"]
    assert "**0.2000 ± 0.0000**" in lines["NDCG@10"] and "<u>0.1100 ± 0.0141</u>" in lines["NDCG@10"]
    assert "| 0.0500 |" in lines["Recall@10"]  # one run: no ± part
    assert "seeds [1, 2]" in text and "GRU4Rec" not in text
    assert set(csv.columns) == {"protocol", "split", "metric", "column", "mean", "std", "n", "rank"}
    empty_text, empty_csv = build_table2({**COMPARE, "models": []}, EVALUATION)
    assert "No model was selected" in empty_text and empty_csv.empty


def test_table2_names_models_that_could_not_run() -> None:
    inputs = {**table2_inputs(), "fdsa": empty_runs()}
    text, _ = build_table2({**COMPARE, "models": ["pop", "sasrec", "maf", "fdsa"]}, EVALUATION, **inputs)
    assert "Not run on this data set (no usable features): fdsa." in text


def test_variant_table_and_table4_improvement() -> None:
    fusion = pd.concat(
        [
            runs("Sum", {"recall@10": [0.5, 0.5], "ndcg@10": [0.3, 0.3]}),
            runs("Gate", {"recall@10": [0.4, 0.4], "ndcg@10": [0.35, 0.35]}),
        ]
    )
    variants = {"Sum": {"fusion": "sum"}, "Gate": {"fusion": "gate"}}
    text, csv = build_variant_table(fusion, variants, COMPARE, EVALUATION, "Table 3")
    assert "| Recall@10 | **0.5000 ± 0.0000** | 0.4000 ± 0.0000 |" in text
    assert "<u>" not in text and len(csv) == 4
    mtl = pd.concat(
        [
            runs("without", {"recall@10": [0.40, 0.40], "ndcg@10": [0.20, 0.20]}),
            runs("with", {"recall@10": [0.42, 0.42], "ndcg@10": [0.19, 0.19]}),
        ]
    )
    text4, csv4 = build_table4(
        mtl, {"without": {"multitask": False}, "with": {"multitask": True}}, COMPARE, EVALUATION
    )
    assert "| Metric | with | without | % Improved |" in text4  # "with" found by its multitask override
    pct = csv4.drop_duplicates("metric").set_index("metric")["improvement_pct"]
    assert pct["recall@10"] == pytest.approx(5.0) and pct["ndcg@10"] == pytest.approx(-5.0)
    assert "+5.00%" in text4 and "-5.00%" in text4
    assert "Not run" in build_table4(mtl, {"only": {}}, COMPARE, EVALUATION)[0]
    assert "Not run" in build_variant_table(empty_runs(), variants, COMPARE, EVALUATION, "Table 3")[0]


def test_figure3_draws_one_bar_per_variant_and_metric() -> None:
    modal = pd.concat(
        runs(v, {"recall@20": [0.1 * i, 0.1 * i], "ndcg@20": [0.05 * i, 0.05 * i]})
        for i, v in enumerate(["Image", "Text", "Category", "All"], start=1)
    )
    variants = {v: {} for v in ["Image", "Text", "Category", "All"]}
    fig, csv = build_figure3(modal, variants, {**COMPARE, "figure_metrics": ["recall@20", "ndcg@20"]})
    assert isinstance(fig, Figure) and len(csv) == 8
    (ax,) = fig.axes
    heights = sorted(round(p.get_height(), 4) for p in ax.patches)
    assert heights == sorted([0.1, 0.2, 0.3, 0.4, 0.05, 0.1, 0.15, 0.2])
    empty_fig, empty_csv = build_figure3(empty_runs(), variants, COMPARE)
    assert isinstance(empty_fig, Figure) and empty_csv.empty


def test_grid_report_lists_points_by_validation_score() -> None:
    grid = pd.concat(
        [
            runs("a", {"ndcg@20": [0.3, 0.3]}, split="valid"),
            runs("a", {"ndcg@20": [0.9, 0.9]}, split="test"),  # a high test score never selects
            runs("b", {"ndcg@20": [0.5, 0.5]}, split="valid"),
            runs("b", {"ndcg@20": [0.1, 0.1]}, split="test"),
        ]
    )
    selection = {"enabled": True, "metric": "ndcg@20", "protocol": "full", "best": {"d_mm": 8}, "seeds": [1]}
    text, table = build_grid_report(grid, selection)
    assert table["variant"].tolist() == ["b", "a"]
    assert "| b (selected) | 0.5000 | 0.1000 |" in text and "| a | 0.3000 | 0.9000 |" in text
    assert "Disabled" in build_grid_report(empty_runs(), {"enabled": False})[0]
