"""Lineage as Kedro-Viz draws it: in ``full`` every node carries its stage tag; in every registered pipeline
every catalog dataset has a layer and the layers form no cycle (Kedro-Viz switches the layer view off when
they do, e.g. "circular dependency detected among layers")."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog

from maf_pipeline.pipeline_registry import FULL_CHAIN
from tests.conftest import project_pipelines

ROOT = Path(__file__).resolve().parents[3]
LAYER_ORDER = [
    "raw",
    "intermediate",
    "primary",
    "feature",
    "model_input",
    "models",
    "model_output",
    "reporting",
]


@pytest.fixture(scope="module")
def registry():
    return project_pipelines()


@pytest.fixture(scope="module")
def layers(registry) -> dict[str, str]:
    """Layer of every dataset name any registered pipeline uses that resolves in the catalog (factories
    included)."""
    loader = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="base")
    catalog = DataCatalog.from_config(dict(loader["catalog"]))
    names = set().union(*(pipeline.datasets() for pipeline in registry.values()))
    out = {}
    for name in sorted(names):
        dataset = None if name.startswith("params:") or name == "parameters" else catalog.get(name)
        if dataset is not None:
            out[name] = (dataset.metadata or {}).get("kedro-viz", {}).get("layer")
    return out


def layer_edges(pipeline, layers: dict[str, str]) -> set[tuple[str, str]]:
    """Layer A -> B when a dataset of layer A feeds, through nodes and layer-less (memory) datasets only, a
    dataset of layer B; this is the dependency Kedro-Viz sorts its layers by."""
    feeds = defaultdict(set)
    for node in pipeline.nodes:
        for i in node.inputs:
            feeds[i] |= set(node.outputs)
    edges = set()
    for start, layer in layers.items():
        todo, seen = list(feeds[start]), set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            if layers.get(name):
                if layers[name] != layer:
                    edges.add((layer, layers[name]))
            else:
                todo.extend(feeds[name])
    return edges


def test_every_node_is_tagged_with_its_stage(registry) -> None:
    for stage in FULL_CHAIN:
        if stage in registry:
            assert all(stage in node.tags for node in registry[stage].nodes), stage
    assert all(node.tags & set(FULL_CHAIN) for node in registry["full"].nodes)
    namespaces = {node.namespace for node in registry["full"].nodes if node.namespace}
    assert {"maf", "pop"} <= namespaces  # model pipelines are collapsed into their namespace


def test_every_catalog_dataset_has_a_known_layer(layers: dict[str, str]) -> None:
    assert layers, "no catalog dataset found"
    missing = sorted(name for name, layer in layers.items() if layer not in LAYER_ORDER)
    assert not missing, f"datasets without a Kedro-Viz layer: {missing}"


def layer_cycle(edges: set[tuple[str, str]]) -> list[str] | None:
    """A cycle of the layer graph as a path (first layer repeated at the end), or None."""
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    state: dict[str, int] = {}

    def visit(layer: str, path: list[str]) -> list[str] | None:
        state[layer] = 1
        for nxt in sorted(graph[layer]):
            if state.get(nxt) == 1:
                return [*path, layer, nxt]
            if nxt not in state and (found := visit(nxt, [*path, layer])):
                return found
        state[layer] = 2
        return None

    for layer in sorted(graph):
        if layer not in state and (found := visit(layer, [])):
            return found
    return None


def test_layer_cycles_are_detected() -> None:
    assert layer_cycle({("model_output", "reporting"), ("reporting", "model_output")}) is not None
    assert layer_cycle({("raw", "primary"), ("primary", "reporting"), ("raw", "reporting")}) is None


def test_no_registered_pipeline_has_a_layer_cycle(registry, layers: dict[str, str]) -> None:
    cycles = {name: layer_cycle(layer_edges(p, layers)) for name, p in registry.items()}
    assert not {name: c for name, c in cycles.items() if c}, "layer cycles"
    assert {"full", "compare", "recommend", "ingestion_interactions"} <= set(registry)
    edges = layer_edges(registry["full"], layers)
    assert ("raw", "intermediate") in edges and ("models", "reporting") in edges
    compare = layer_edges(registry["compare"], layers)
    assert ("models", "model_output") in compare and ("model_output", "reporting") in compare
