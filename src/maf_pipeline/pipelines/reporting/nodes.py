"""Reporting nodes: the pictures people look at instead of JSON (training curves, attention maps like the
paper's Fig. 4, data statistics, sequence lengths). Figures are returned to the catalog's matplotlib dataset.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from maf_pipeline.inference import load_model
from maf_pipeline.models import feature_tables

logger = logging.getLogger(__name__)

# Names of the attention maps in the output, from the keys of MAF.forward(..., return_attention=True).
MAP_NAMES = {"id": "item", "mm": "multimodal", "fused": "fused"}
MAP_TITLES = {"item": "item attention", "multimodal": "multimodal attention", "fused": "fused attention"}


def plot_training_curves(training_history: dict[str, Any]) -> Figure:
    """Training loss (total and parts) and validation metrics per epoch, the best epoch marked."""
    epochs = training_history.get("epochs") or []
    if not epochs:
        raise ValueError("training_history has no epochs to plot")
    x = [e["epoch"] for e in epochs]
    best = training_history.get("best_epoch")
    name = training_history.get("architecture", "model")
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_valid = fig.subplots(1, 2)
    parts = list(epochs[0]["loss"])
    for part in ["loss", *(p for p in parts if p != "loss")]:
        label = "total" if part == "loss" else f"L_{part}"
        style = {"lw": 2.2, "color": "black"} if part == "loss" else {"lw": 1.2}
        ax_loss.plot(x, [e["loss"][part] for e in epochs], label=label, **style)
    ax_loss.set(xlabel="epoch", ylabel="training loss (mean over batches)", title=f"{name}: training loss")
    if all(e["loss"][p] > 0 for e in epochs for p in parts):
        ax_loss.set_yscale("log")
    metrics = [m for m in epochs[0]["valid"] if m != "num_users"]
    for metric in metrics:
        ax_valid.plot(
            x, [e["valid"][metric] for e in epochs], marker="o" if len(x) <= 30 else None, ms=3, label=metric
        )
    ax_valid.set(xlabel="epoch", ylabel="validation metric", title=f"{name}: validation (full ranking)")
    for ax in (ax_loss, ax_valid):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best:
            ax.axvline(best, color="grey", ls="--", lw=1, label=f"best epoch {best}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _sample_user(
    test_sequences: pd.DataFrame, positions: int, user_id: str | None, user_index: pd.DataFrame, seed: int
) -> pd.Series:
    """The test row of ``user_id``, or a seeded random user with at least ``positions`` history items."""
    if user_id is not None:
        match = user_index.loc[user_index["user_id"] == str(user_id), "user_idx"]
        rows = test_sequences[test_sequences["user_idx"].isin(match)]
        if rows.empty:
            raise ValueError(f"reporting.attention.user {user_id!r} has no test sequence")
        return rows.iloc[0]
    lengths = test_sequences["history"].map(len)
    pool = test_sequences[lengths >= positions]
    if pool.empty:  # no history that long: the longest one
        logger.warning("no test history has %d items; using the longest (%d)", positions, lengths.max())
        pool = test_sequences[lengths == lengths.max()]
    return pool.iloc[int(np.random.default_rng(seed).integers(len(pool)))]


def compute_attention_maps(
    trained_model: dict[str, Any],
    test_sequences: pd.DataFrame,
    user_index: pd.DataFrame,
    item_index: pd.DataFrame,
    filtered_items: pd.DataFrame,
    image_features: dict[str, Any],
    text_features: dict[str, Any],
    category_features: dict[str, Any],
    attention_params: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Item, multimodal and fused attention of one layer (paper Fig. 4) for a sampled user's last items.

    The model reads the user's ``positions`` most recent test-history items (eval mode), so each map is the
    model's full ``(positions, positions)`` causal attention distribution: every row sums to 1. Heads are
    averaged (``head: mean``) or one head is picked.
    """
    p = attention_params
    positions, layer, head = int(p["positions"]), int(p["layer"]), p["head"]
    positions = min(positions, int(trained_model["__metadata__"]["max_len"]))  # the model's window
    row = _sample_user(test_sequences, positions, p["user"], user_index, int(seed))
    items = np.array(row["history"], dtype=np.int64)[-positions:]  # a writable copy for torch.from_numpy
    model = load_model(trained_model, feature_tables(image_features, text_features, category_features))
    with torch.no_grad():
        _, maps = model(torch.from_numpy(items)[None], return_attention=True)
    n_layers = len(maps)
    layer_maps = maps[layer]
    out_maps = {}
    for key, name in MAP_NAMES.items():
        if key not in layer_maps:
            continue
        probs = layer_maps[key][0].double()  # (h, L, L)
        probs = probs.mean(0) if head == "mean" else probs[int(head)]
        out_maps[name] = probs.tolist()
    id_of = dict(zip(item_index["item_idx"], item_index["item_id"], strict=True))
    titles = dict(zip(filtered_items["item_id"], filtered_items["title"], strict=False))
    user_id = user_index.loc[user_index["user_idx"] == row["user_idx"], "user_id"].iloc[0]
    result = {
        "architecture": trained_model["__metadata__"]["architecture"],
        "user_id": str(user_id),
        "user_idx": int(row["user_idx"]),
        "layer": layer % n_layers,
        "num_layers": n_layers,
        "head": head,
        "items": [
            {
                "position": i + 1,
                "item_idx": int(x),
                "item_id": id_of[int(x)],
                "title": titles.get(id_of[int(x)], ""),
            }
            for i, x in enumerate(items)
        ],
        "maps": out_maps,
    }
    check_attention_rows(result)
    logger.info(
        "attention maps of user %s: layer %d of %d, %d positions, maps %s",
        user_id,
        result["layer"] + 1,
        n_layers,
        len(items),
        sorted(out_maps),
    )
    return result


def check_attention_rows(attention: dict[str, Any], atol: float = 1e-4) -> None:
    """Raise if a map is not square, not causal, or a row does not sum to 1 (a softmax over visible keys)."""
    for name, matrix in attention["maps"].items():
        m = np.asarray(matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"{name} attention map must be square, got shape {m.shape}")
        sums = m.sum(axis=1)
        if not np.allclose(sums, 1.0, atol=atol):
            raise ValueError(f"{name} attention rows must sum to 1; max error {np.abs(sums - 1).max():.2e}")
        if np.abs(np.triu(m, k=1)).max(initial=0.0) > atol:
            raise ValueError(f"{name} attention puts weight on future positions")


def plot_attention_maps(attention: dict[str, Any]) -> Figure:
    """One PNG with the item, multimodal and fused attention heat maps (rows: queries), Fig. 4 style."""
    check_attention_rows(attention)
    maps = attention["maps"]
    n = len(next(iter(maps.values())))
    fig = Figure(figsize=(5.2 * len(maps) + 0.8, 5.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(maps)))
    # Row 1 (the oldest item attends only to itself) is always 1: scale colours by the other rows.
    vmax = max(float(np.max(np.asarray(m)[1:], initial=0.0)) for m in maps.values()) or 1.0
    image = None
    ticks = np.arange(n)
    labels = [str(i + 1) for i in ticks]
    for ax, (name, matrix) in zip(axes, maps.items(), strict=True):
        m = np.asarray(matrix, dtype=np.float64)
        shown = np.ma.masked_where(np.triu(np.ones_like(m, dtype=bool), k=1), m)  # hide the causal mask
        image = ax.imshow(shown, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(MAP_TITLES.get(name, name))
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.set_yticks(ticks, labels, fontsize=7)
        ax.set_xlabel("key position (1 = oldest)")
        ax.set_ylabel("query position")
    fig.colorbar(image, ax=list(axes), shrink=0.8, extend="max", label="attention probability")
    head = "mean over heads" if attention["head"] == "mean" else f"head {attention['head']}"
    fig.suptitle(
        f"{attention['architecture']}: layer {attention['layer'] + 1} of {attention['num_layers']} ({head}), "
        f"user {attention['user_id']}, last {n} items"
    )
    return fig


def plot_dataset_statistics(dataset_statistics: dict[str, Any]) -> Figure:
    """The Table-1 statistics as a table next to the filter funnel (interactions, users, items per stage)."""
    t = dataset_statistics["table1"]
    rows = [
        ["#Users", f"{t['users']:,}"],
        ["#Items", f"{t['items']:,}"],
        ["#Avg. Actions/User", f"{t['avg_actions_per_user']:.1f}"],
        ["#Avg. Actions/Item", f"{t['avg_actions_per_item']:.1f}"],
        ["#Interactions", f"{t['interactions']:,}"],
        ["Density", f"{t['density']:.4%}"],
        ["From", str(dataset_statistics.get("first_interaction", ""))[:10]],
        ["To", str(dataset_statistics.get("last_interaction", ""))[:10]],
    ]
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    ax_table, ax_funnel = fig.subplots(1, 2, width_ratios=[1, 1.6])
    ax_table.axis("off")
    table = ax_table.table(cellText=rows, colLabels=["statistic", "value"], loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    table.scale(1, 1.6)
    ax_table.set_title(dataset_statistics.get("dataset", "dataset"), fontsize=11)
    stages = [{"stage": "input", **dataset_statistics["input"]}, *dataset_statistics["funnel"]]
    x = np.arange(len(stages))
    width = 0.27
    for i, what in enumerate(("interactions", "users", "items")):
        values = [s[what] for s in stages]
        bars = ax_funnel.bar(x + (i - 1) * width, values, width, label=what)
        ax_funnel.bar_label(bars, [f"{v:,}" for v in values], fontsize=6, rotation=90, padding=2)
    ax_funnel.set_yscale("log")
    ax_funnel.set_xticks(x, [s["stage"] for s in stages])
    ax_funnel.set(ylabel="count (log scale)", title="filter funnel: what each stage keeps")
    top = max(s["interactions"] for s in stages)
    ax_funnel.set_ylim(top=top * 8)  # room above the bars for their labels and the legend
    ax_funnel.legend(fontsize=8, ncols=3, loc="upper center")
    ax_funnel.grid(axis="y", alpha=0.3)
    return fig


def plot_sequence_lengths(kcore_interactions: pd.DataFrame, max_len: int, bins: int = 40) -> Figure:
    """Histograms of interactions per user (sequence length, against the window ``max_len``) and per item."""
    per_user = kcore_interactions.groupby("user_id", observed=True).size().to_numpy()
    per_item = kcore_interactions.groupby("item_id", observed=True).size().to_numpy()
    if not len(per_user):
        raise ValueError("kcore_interactions is empty: nothing to plot")
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_user, ax_item = fig.subplots(1, 2)
    edges = np.histogram_bin_edges(per_user, bins=min(bins, int(per_user.max() - per_user.min()) + 1))
    ax_user.hist(per_user, bins=edges, color="tab:blue", edgecolor="white")
    ax_user.axvline(
        np.median(per_user), color="black", ls="--", lw=1, label=f"median {np.median(per_user):g}"
    )
    # A user with n interactions has a test history of n - 1 items; the model reads the last max_len of them.
    longer = float((per_user - 1 > max_len).mean())
    if longer:
        ax_user.axvline(max_len + 1, color="tab:red", lw=1.2, label=f"longer than max_len = {max_len}")
    ax_user.set(
        xlabel="interactions per user (sequence length)",
        ylabel="users",
        title=f"{len(per_user):,} users, mean length {per_user.mean():.1f}, "
        f"{longer:.1%} cut to max_len = {max_len}",
    )
    ax_item.hist(
        per_item, bins=np.histogram_bin_edges(per_item, bins=bins), color="tab:green", edgecolor="white"
    )
    ax_item.set(
        xlabel="interactions per item",
        ylabel="items",
        title=f"{len(per_item):,} items, mean {per_item.mean():.1f} interactions",
    )
    if per_user.max() > 20 * np.median(per_user):
        ax_user.set_yscale("log")
    if per_item.max() > 20 * np.median(per_item):
        ax_item.set_yscale("log")
    for ax in (ax_user, ax_item):
        ax.grid(axis="y", alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_yscale() == "linear":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_user.legend(fontsize=8)
    return fig
