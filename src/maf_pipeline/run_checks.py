"""Checks of a run before its first node: every input it does not make itself must already be on disk.

``kedro run --from-nodes=kcore_filter`` after ``complete_interactions.parquet`` was deleted would otherwise
fail inside the first node with Kedro's generic load error and a "repeat the previous command" hint; this
names the missing dataset, its file and the node (and pipeline) that makes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kedro.pipeline import Pipeline


class MissingInputError(RuntimeError):
    """An intermediate dataset this run reads is not on disk and no node of the run makes it."""


def _layer(dataset: Any) -> str | None:
    return ((getattr(dataset, "metadata", None) or {}).get("kedro-viz") or {}).get("layer")


def producers(name: str, registry: dict[str, Pipeline]) -> list[tuple[str, str]]:
    """``(node, pipeline)`` pairs of the registered pipelines that output ``name``, each node named with the
    smallest pipeline that holds it (its stage: ``preprocessing`` rather than ``full`` or ``compare``)."""
    found: dict[str, str] = {}
    for pipeline_name in sorted(registry, key=lambda n: (len(registry[n].nodes), n)):
        for node in registry[pipeline_name].nodes:
            if name in node.outputs and node.name not in found:
                found[node.name] = pipeline_name
    return list(found.items())


Registry = dict[str, Pipeline] | Callable[[], dict[str, Pipeline]]


def missing_inputs(pipeline: Pipeline, catalog: Any, registry: Registry) -> list[str]:
    """One message per file-backed, non-raw input of ``pipeline`` that does not exist (it does not make
    its inputs)."""
    messages = []
    for name in sorted(pipeline.inputs()):
        if name.startswith("params:") or name == "parameters":
            continue
        try:
            dataset = catalog.get(name)
        except Exception:
            continue
        if dataset is None or _layer(dataset) == "raw" or getattr(dataset, "_filepath", None) is None:
            continue
        if catalog.exists(name):
            continue
        if callable(registry):  # built only now: every pipeline, for the message
            registry = registry()
        made_by = producers(name, registry)
        where = "; ".join(f"node {n!r} (pipeline {p!r})" for n, p in made_by) or "no registered pipeline"
        first = made_by[0][0] if made_by else None
        fix = (
            f" Make it first: `kedro run --to-outputs={name}`, or start this run earlier: "
            f"`--from-nodes={first}`." if first else ""
        )  # fmt: skip
        messages.append(
            f"dataset {name!r} ({dataset._filepath}) does not exist and this run does not make it; "
            f"it is made by {where}.{fix}"
        )
    return messages


def check_inputs(pipeline: Pipeline, catalog: Any, registry: Registry) -> None:
    """Raise :class:`MissingInputError` listing every missing input of the run."""
    messages = missing_inputs(pipeline, catalog, registry)
    if messages:
        raise MissingInputError("Missing inputs:\n" + "\n".join(f"- {m}" for m in messages))
