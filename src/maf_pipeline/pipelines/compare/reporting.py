"""Reporting nodes of ``compare``: the paper's Tables 2-4 (Markdown + CSV), Fig. 3 (PNG) and the grid search.

Each cell is the mean over seeds and, when there are several, ``± sample std``. Tables are laid out as in the
paper (one row per metric, one column per model or variant) and report the test split; the CSVs hold the same
numbers in long form (protocol, split, metric, column, mean, std, n, rank).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

DISPLAY = {
    "pop": "Pop",
    "gru4rec": "GRU4Rec",
    "caser": "Caser",
    "sasrec": "SASRec",
    "bert4rec": "BERT4Rec",
    "sasrecf": "SASRecF",
    "fdsa": "FDSA",
    "maf": "MAF",
}
METRIC_NAMES = {"recall": "Recall", "ndcg": "NDCG", "mrr": "MRR"}
PROTOCOL_NAMES = {"full": "ranked among all items", "sampled": "ranked among {n} random non-interacted items"}
SUMMARY_COLUMNS = ["protocol", "split", "metric", "column", "mean", "std", "n", "rank"]


def metric_label(metric: str) -> str:
    """``recall@10`` -> ``Recall@10``, ``mrr`` -> ``MRR``."""
    name, _, k = metric.partition("@")
    return METRIC_NAMES.get(name, name) + (f"@{k}" if k else "")


def summarise(
    runs: pd.DataFrame, columns: list[str], metrics: list[str], split: str = "test"
) -> pd.DataFrame:
    """Mean, std (ddof 1, 0 for a single run) and run count per (protocol, metric, column), ranked per row.

    ``columns`` are variant labels in display order; rank 1 is the best mean within a (protocol, metric) row.
    """
    sub = runs[(runs["split"] == split) & runs["metric"].isin(metrics) & runs["variant"].isin(columns)]
    if sub.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    agg = sub.groupby(["protocol", "metric", "variant"], sort=False)["value"].agg(["mean", "std", "count"])
    agg = agg.reset_index().rename(columns={"variant": "column", "count": "n"})
    agg["std"] = agg["std"].fillna(0.0)
    agg["split"] = split
    agg["rank"] = agg.groupby(["protocol", "metric"])["mean"].rank(ascending=False, method="min").astype(int)
    agg["metric"] = pd.Categorical(agg["metric"], metrics, ordered=True)
    agg["column"] = pd.Categorical(agg["column"], columns, ordered=True)
    agg = agg.sort_values(["protocol", "metric", "column"]).reset_index(drop=True)
    agg["metric"], agg["column"] = agg["metric"].astype(str), agg["column"].astype(str)
    return agg[SUMMARY_COLUMNS]


def _cell(row: pd.Series, marks: dict[int, tuple[str, str]]) -> str:
    text = f"{row['mean']:.4f}" + (f" ± {row['std']:.4f}" if row["n"] > 1 else "")
    left, right = marks.get(int(row["rank"]), ("", ""))
    return f"{left}{text}{right}"


def markdown_table(
    summary: pd.DataFrame,
    columns: list[str],
    metrics: list[str],
    marks: dict[int, tuple[str, str]],
    extra: dict[str, dict[str, str]] | None = None,
) -> str:
    """One Markdown table per protocol: rows = metrics, columns = ``columns`` (+ ``extra[col][metric]``)."""
    blocks = []
    for protocol, part in summary.groupby("protocol", sort=False):
        shown = [c for c in columns if c in set(part["column"])]
        header = ["Metric", *(DISPLAY.get(c, c) for c in shown), *(extra or {})]
        lines = [f"*{protocol}*", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for metric in metrics:
            row = part[part["metric"] == metric].set_index("column")
            if row.empty:
                continue
            cells = [_cell(row.loc[c], marks) if c in row.index else "–" for c in shown]
            cells += [values.get(metric, "–") for values in (extra or {}).values()]
            lines.append("| " + " | ".join([metric_label(metric), *cells]) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _protocol_note(compare_params: dict[str, Any], evaluation_params: dict[str, Any]) -> str:
    n = int({**evaluation_params, **compare_params["evaluation"]}["num_negatives"])
    return "; ".join(f"*{p}*: {PROTOCOL_NAMES.get(p, p).format(n=n)}" for p in compare_params["protocols"])


def _seed_note(runs: pd.DataFrame) -> str:
    seeds = sorted({int(s) for s in runs["seed"].dropna()})
    return f"seeds {seeds}" if seeds else "no trained model"


def _metrics(compare_params: dict[str, Any]) -> list[str]:
    return list(compare_params["metrics"])


def build_table2(
    compare_params: dict[str, Any], evaluation_params: dict[str, Any], **model_runs: pd.DataFrame
) -> tuple[str, pd.DataFrame]:
    """Table 2: the selected models in ``compare.models`` order; best **bold**, second <u>underlined</u>."""
    columns = [m for m in compare_params["models"] if m in model_runs]
    runs = pd.concat([model_runs[m] for m in columns], ignore_index=True) if columns else pd.DataFrame()
    title = "# Table 2: performance comparison (test split, mean ± std over seeds)"
    if runs.empty:
        return f"{title}\n\nNo model was selected (compare.models is empty).\n", pd.DataFrame(
            columns=SUMMARY_COLUMNS
        )
    metrics = _metrics(compare_params)
    summary = summarise(runs, columns, metrics)
    skipped = [m for m in columns if m not in set(summary["column"])]
    notes = [
        f"Models trained with {_seed_note(runs)}; Pop is deterministic (one run).",
        "Per row: best in **bold**, second best <u>underlined</u>. "
        + _protocol_note(compare_params, evaluation_params),
    ]
    if skipped:
        notes.append(f"Not run on this data set (no usable features): {', '.join(skipped)}.")
    table = markdown_table(summary, columns, metrics, {1: ("**", "**"), 2: ("<u>", "</u>")})
    return f"{title}\n\n{table}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n", summary


def build_variant_table(
    runs: pd.DataFrame,
    variants: dict[str, Any] | None,
    compare_params: dict[str, Any],
    evaluation_params: dict[str, Any],
    title: str,
) -> tuple[str, pd.DataFrame]:
    """Table 3 (fusion functions) or any family of MAF variants: columns in parameter order, best **bold**."""
    columns = list(variants or {})
    if runs.empty or not columns:
        return f"# {title}\n\nNot run (no variants configured or none applicable).\n", pd.DataFrame(
            columns=SUMMARY_COLUMNS
        )
    metrics = _metrics(compare_params)
    summary = summarise(runs, columns, metrics)
    table = markdown_table(summary, columns, metrics, {1: ("**", "**")})
    notes = [
        f"MAF variants trained with {_seed_note(runs)}; best per row in **bold**.",
        _protocol_note(compare_params, evaluation_params),
    ]
    return f"# {title}\n\n{table}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n", summary


def build_table4(
    runs: pd.DataFrame,
    variants: dict[str, Any] | None,
    compare_params: dict[str, Any],
    evaluation_params: dict[str, Any],
) -> tuple[str, pd.DataFrame]:
    """Table 4: MAF with and without the multitask loss and ``% Improved = (with - without) / without * 100``.

    "With" is the variant whose overrides set ``multitask: true`` (else the first), "without" the other one.
    """
    title = "Table 4: MAF with and without multitask learning (MTL)"
    variants = variants or {}
    labels = list(variants)
    if runs.empty or len(labels) != 2:
        return f"# {title}\n\nNot run (needs exactly two variants: with and without MTL).\n", pd.DataFrame(
            columns=[*SUMMARY_COLUMNS, "improvement_pct"]
        )
    with_label = next((k for k, v in variants.items() if (v or {}).get("multitask") is True), labels[0])
    without_label = next(k for k in labels if k != with_label)
    columns = [with_label, without_label]
    metrics = _metrics(compare_params)
    summary = summarise(runs, columns, metrics)
    improvement: dict[str, dict[str, str]] = {"% Improved": {}}
    pct_rows = []
    for (protocol, metric), part in summary.groupby(["protocol", "metric"], sort=False):
        means = part.set_index("column")["mean"]
        if with_label in means and without_label in means and means[without_label] > 0:
            pct = 100.0 * (means[with_label] - means[without_label]) / means[without_label]
            pct_rows.append({"protocol": protocol, "metric": metric, "improvement_pct": pct})
    pct_frame = pd.DataFrame(pct_rows, columns=["protocol", "metric", "improvement_pct"])
    blocks = []
    for protocol, part in summary.groupby("protocol", sort=False):
        pcts = pct_frame[pct_frame["protocol"] == protocol].set_index("metric")["improvement_pct"]
        improvement = {"% Improved": {m: f"{v:+.2f}%" for m, v in pcts.items()}}
        blocks.append(markdown_table(part, columns, metrics, {1: ("**", "**")}, improvement))
    notes = [f"Trained with {_seed_note(runs)}.", _protocol_note(compare_params, evaluation_params)]
    text = f"# {title}\n\n" + "\n\n".join(blocks) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return text, summary.merge(pct_frame, on=["protocol", "metric"], how="left")


def build_figure3(
    runs: pd.DataFrame, variants: dict[str, Any] | None, compare_params: dict[str, Any]
) -> tuple[Figure, pd.DataFrame]:
    """Fig. 3: MAF with each modality alone and with all of them, grouped bars per metric with ± std bars."""
    columns = list(variants or {})
    metrics = list(compare_params["figure_metrics"])
    summary = (
        summarise(runs, columns, metrics)
        if not runs.empty and columns
        else pd.DataFrame(columns=SUMMARY_COLUMNS)
    )
    protocols = list(dict.fromkeys(summary["protocol"])) or ["full"]
    fig = Figure(figsize=(3.2 * len(metrics) * len(protocols) + 1.5, 3.6), layout="constrained")
    axes = fig.subplots(1, len(protocols), squeeze=False)[0]
    for ax, protocol in zip(axes, protocols, strict=True):
        part = summary[summary["protocol"] == protocol]
        shown = [c for c in columns if c in set(part["column"])]
        if not shown:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        width = 0.8 / len(shown)
        x = np.arange(len(metrics))
        for i, column in enumerate(shown):
            rows = part[part["column"] == column].set_index("metric").reindex(metrics)
            ax.bar(
                x + (i - (len(shown) - 1) / 2) * width,
                rows["mean"],
                width,
                yerr=rows["std"],
                capsize=3,
                label=column,
            )
        ax.set_xticks(x, [metric_label(m) for m in metrics])
        ax.set_title(f"test, {protocol}")
        ax.set_ylabel("score")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Fig. 3: MAF by modality (mean ± std over seeds)")
    return fig, summary


def build_grid_report(grid_runs: pd.DataFrame, grid_selection: dict[str, Any]) -> tuple[str, pd.DataFrame]:
    """The grid search: every point's mean validation score (the selection criterion) and test score."""
    title = "# Grid search over d', lambda and F (selection on validation only)"
    if not grid_selection.get("enabled"):
        return f"{title}\n\nDisabled (set compare.grid.enabled: true).\n", pd.DataFrame(columns=["variant"])
    metric, protocol = grid_selection["metric"], grid_selection["protocol"]
    sub = grid_runs[(grid_runs["metric"] == metric) & (grid_runs["protocol"] == protocol)]
    table = sub.pivot_table(index="variant", columns="split", values="value", aggfunc=["mean", "std"])
    table.columns = [f"{split}_{stat}" for stat, split in table.columns]
    table = table.reset_index().sort_values("valid_mean", ascending=False, ignore_index=True)
    lines = [f"| point | valid {metric_label(metric)} | test {metric_label(metric)} |", "|---|---|---|"]
    for _, row in table.iterrows():
        star = " (selected)" if row["valid_mean"] == table["valid_mean"].max() else ""
        lines.append(f"| {row['variant']}{star} | {row['valid_mean']:.4f} | {row['test_mean']:.4f} |")
    note = f"Selected: {grid_selection['best']} (protocol {protocol}, seeds {grid_selection['seeds']})."
    return f"{title}\n\n" + "\n".join(lines) + f"\n\n- {note}\n", table
