"""Wiring of ``compare``: the data chain up to the features, then one node per model and per MAF experiment.

Kedro builds pipelines before reading parameters, so the nodes are declared here: one per registered model
(``maf_pipeline.models.MODELS``, reading ``params:<model>.model``) plus the popularity floor, one per MAF
experiment family (Table 3 fusion, Table 4 multitask, Fig. 3 modalities) and the grid search. Each node loops
over ``compare.seeds`` itself, and skips (empty output) a model not listed in ``compare.models`` or a family
with no variants, so the selection is a parameter change and ``kedro viz`` stays one box per model.
"""

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from maf_pipeline.model_inputs import bundle_model_inputs
from maf_pipeline.models import MODELS

from ..features import create_pipeline as features_pipeline
from ..ingestion import create_pipeline as ingestion_pipeline
from ..preprocessing import create_pipeline as preprocessing_pipeline
from ..sequences import create_pipeline as sequences_pipeline
from .nodes import resolve_maf_config, run_grid_search, run_maf_variants, run_model, run_popularity
from .reporting import build_figure3, build_grid_report, build_table2, build_table4, build_variant_table

SHARED = (
    "train_sequences",
    "valid_sequences",
    "test_sequences",
    "item_index",
    "image_features",
    "text_features",
    "category_features",
)
INPUTS = "compare.model_inputs"  # SHARED as one ModelInputs (bundle_model_inputs), passed by reference
SETTINGS = (
    "params:compare",
    "params:training",
    "params:evaluation",
    "params:sequences.max_len",
    "params:seed",
)
# MAF experiment families: params:compare.<family> maps a column label to overrides of the MAF block.
FAMILIES = ("fusion", "multitask", "modalities")


# Tag of the comparison nodes: ``kedro run --pipeline=compare --tags=comparison`` skips the data chain.
TAG = "comparison"


def _node(func, inputs, outputs, name: str) -> Node:
    return Node(func, inputs=inputs, outputs=outputs, name=name, namespace="compare")


def _named(func, **kwargs):
    """``partial(func, **kwargs)`` that keeps ``func``'s name (readable logs and ``kedro viz``)."""
    return update_wrapper(partial(func, **kwargs), func)


def create_compare_pipeline() -> Pipeline:
    """The comparison nodes only (tag ``comparison``), reading the sequences and features from the catalog."""
    nodes = [
        _node(bundle_model_inputs, list(SHARED), INPUTS, "bundle_model_inputs"),
        _node(
            run_grid_search,
            [INPUTS, "params:maf.model", "params:compare.grid", *SETTINGS],
            ["compare.grid.runs", "compare.grid_selection"],
            "run_grid_search",
        ),
        _node(
            resolve_maf_config,
            ["params:maf.model", "compare.grid_selection"],
            "compare.maf_config",
            "resolve_maf",
        ),
        _node(
            run_popularity,
            [*SHARED[:4], "params:compare", "params:evaluation", "params:seed"],
            "compare.pop.runs",
            "run_pop",
        ),
    ]
    for name in MODELS:
        block = "compare.maf_config" if name == "maf" else f"params:{name}.model"
        nodes.append(
            _node(
                _named(run_model, name=name),
                [INPUTS, block, *SETTINGS],
                f"compare.{name}.runs",
                f"run_{name}",
            )
        )
    for family in FAMILIES:
        inputs = [INPUTS, "compare.maf_config", "compare.maf.runs", f"params:compare.{family}", *SETTINGS]
        nodes.append(_node(run_maf_variants, inputs, f"compare.{family}.runs", f"run_{family}"))
    table2_inputs = {"compare_params": "params:compare", "evaluation_params": "params:evaluation"}
    table2_inputs.update({m: f"compare.{m}.runs" for m in ("pop", *MODELS)})
    nodes += [
        _node(build_table2, table2_inputs, ["compare.table2", "compare.table2_csv"], "build_table2"),
        _node(
            _named(build_variant_table, title="Table 3: attention fusion functions (MAF)"),
            ["compare.fusion.runs", "params:compare.fusion", "params:compare", "params:evaluation"],
            ["compare.table3", "compare.table3_csv"],
            "build_table3",
        ),
        _node(
            build_table4,
            ["compare.multitask.runs", "params:compare.multitask", "params:compare", "params:evaluation"],
            ["compare.table4", "compare.table4_csv"],
            "build_table4",
        ),
        _node(
            build_figure3,
            ["compare.modalities.runs", "params:compare.modalities", "params:compare"],
            ["compare.figure3", "compare.figure3_csv"],
            "build_figure3",
        ),
        _node(
            build_grid_report,
            ["compare.grid.runs", "compare.grid_selection"],
            ["compare.grid_report", "compare.grid_csv"],
            "build_grid_report",
        ),
    ]
    return Pipeline(nodes, tags=[TAG])


def create_pipeline(**kwargs) -> Pipeline:
    """Raw data to reports: ingestion, preprocessing, sequences, features, then the comparison.

    ``kedro run --pipeline=compare --tags=comparison`` reruns only the comparison on existing features.
    """
    data = ingestion_pipeline() + preprocessing_pipeline() + sequences_pipeline() + features_pipeline()
    return data + create_compare_pipeline()
