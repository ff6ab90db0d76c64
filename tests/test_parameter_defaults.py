"""One source of parameter defaults: the schema (``maf_pipeline.parameters``).

``conf/base`` may only restate the schema's defaults, except for the values named in ``OVERRIDES`` with the
reason they differ; a new difference (or a stale entry here) fails, so the YAML and the code cannot drift
apart again. Nodes receive the default-filled blocks (``ParameterSchemaHook.after_catalog_created``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kedro.config import OmegaConfigLoader
from pydantic import BaseModel

from maf_pipeline.hooks import ParameterSchemaHook
from maf_pipeline.parameters import (
    BLOCKS,
    MODEL_BLOCKS,
    InvalidBlockError,
    Parameters,
    filled,
    filled_model,
    resolve_parameters,
)
from maf_pipeline.settings import CONFIG_LOADER_ARGS

REPO = Path(__file__).resolve().parents[1]

_PAPER_TRANSFORMER = (
    "the paper's transformer (section 4.2: d=256, 4 layers, 8 heads); the schema keeps RecBole's"
)
#: conf/base values that deliberately differ from the schema's default, and why.
OVERRIDES: dict[str, str] = {
    "date_window.start": "the paper's window: reviews of 2016-2017 (the schema: no window)",
    "date_window.end": "the paper's window: reviews of 2016-2017 (the schema: no window)",
    "preprocessing.dataset_name": "the bundled sample's name in the reports",
    "preprocessing.required_modalities": "the paper keeps items with image, text and categories",
    "features.images.download.user_agent": "the project's identification towards image hosts",
    "training.checkpoint_dir": "a Kedro run resumes from its data folder; library calls write no checkpoints",
    "serving.registered_model_name": "a Kedro run registers its model in MLflow under this name",
    "compare.models": "the paper's Table 2 columns (the schema: none selected)",
    "compare.seeds": "five seeds for Table 2's mean ± std",
    "compare.protocols": "both protocols the paper's tables are read under",
    "compare.parallel.runs_per_gpu": "three small runs share one GPU",
    "compare.fusion": "the paper's Table 3 variants",
    "compare.multitask": "the paper's Table 4 variants",
    "compare.modalities": "the paper's Fig. 3 variants",
    "compare.grid.d_mm": "the paper's grid (section 4.2)",
    "compare.grid.mtl_lambda": "the paper's grid (section 4.2)",
    "compare.grid.fusion": "the paper's grid (section 4.2)",
    "compare.grid.seeds": "one seed per grid point",
    "compare.grid.fixed": "the paper's lambda grid is over raw multitask losses",
    "tune.space": "the search space every model is tuned over",
    "tune.model_space": "MAF's own levers in the search",
    **{
        f"{m}.model.{k}": _PAPER_TRANSFORMER
        for m in ("maf", "sasrec", "sasrecf", "fdsa", "bert4rec")
        for k in ("d", "n_layers", "n_heads")
    },
    "maf.model.d_mm": "the paper's d' for d=256",
    "bert4rec.model.dropout": "BERT4Rec's published dropout (0.2), not SASRec's 0.5",
    "bert4rec.model.attn_dropout": "BERT4Rec's published dropout (0.2), not SASRec's 0.5",
}


def _leaves(values: dict[str, Any], schema: type[BaseModel], prefix: str) -> dict[str, tuple[Any, Any]]:
    """``dotted key -> (conf value, schema default)`` down to the schema's fields (a free-form mapping such
    as ``compare.fusion`` is one value)."""
    out: dict[str, tuple[Any, Any]] = {}
    defaults = (
        schema.model_construct().model_dump() if schema is not Parameters else Parameters().model_dump()
    )
    for key, value in values.items():
        field = schema.model_fields.get(key)
        inner = field.annotation if field else None
        if isinstance(value, dict) and isinstance(inner, type) and issubclass(inner, BaseModel):
            out.update(_leaves(value, inner, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = (value, defaults.get(key, "<no default>"))
    return out


def _base_parameters() -> dict[str, Any]:
    return OmegaConfigLoader(str(REPO / "conf"), env="base", **CONFIG_LOADER_ARGS)["parameters"]


def test_conf_base_equals_the_schema_defaults_except_the_named_overrides() -> None:
    params = _base_parameters()
    values = _leaves({k: v for k, v in params.items() if k in BLOCKS}, Parameters, "")
    for name, block in params.items():
        if name not in BLOCKS:
            schema = MODEL_BLOCKS[block["model"]["architecture"]]
            model = {k: v for k, v in block["model"].items() if k != "architecture"}
            values.update(_leaves(model, schema, f"{name}.model."))
    differ = {k for k, (conf, default) in values.items() if conf != default}
    assert differ - set(OVERRIDES) == set(), {k: values[k] for k in differ - set(OVERRIDES)}
    assert set(OVERRIDES) - differ == set(), "stale entries: conf/base now equals the schema there"


def test_nodes_receive_complete_blocks() -> None:
    params = _base_parameters()
    resolved = resolve_parameters(params)
    for name, schema in BLOCKS.items():
        if isinstance(schema, type):
            assert set(resolved[name]) >= set(schema.model_fields), name
    assert set(resolved["maf"]["model"]) == set(MODEL_BLOCKS["maf"].model_fields)
    assert resolved["training"]["eval_batch_size"] == params["training"]["eval_batch_size"]
    # a key the YAML omits arrives at the schema's default
    del params["training"]["eval_batch_size"], params["features"]["cache"]
    resolved = resolve_parameters(params)
    assert resolved["training"]["eval_batch_size"] == 1024
    assert resolved["features"]["cache"] == {"enabled": True, "flush_every": 1024, "lock_wait_s": 0}


def test_the_hook_feeds_filled_parameters_to_the_catalog() -> None:
    from kedro.io import DataCatalog

    raw = {"training": {"epochs": 3}, "maf": {"model": {"architecture": "maf", "d": 16, "d_mm": 8}}}
    catalog = DataCatalog()
    for name, value in (("parameters", raw), ("params:training", raw["training"])):
        catalog[name] = value
    ParameterSchemaHook().after_catalog_created(catalog, {"parameters": raw})
    training = catalog.load("params:training")
    assert training["epochs"] == 3 and training["eval_batch_size"] == 1024
    assert catalog.load("params:training.early_stopping") == {"metric": "ndcg@20", "patience": 10}
    assert catalog.load("params:maf.model")["fusion"] == "sum"
    assert catalog.load("params:training.early_stopping.patience") == 10
    bad = {"training": {"epochs": 0}}
    catalog = DataCatalog()
    catalog["params:training"] = bad["training"]
    ParameterSchemaHook().after_catalog_created(catalog, {"parameters": bad})  # left for the check to report
    assert catalog.load("params:training") == {"epochs": 0}


def test_filled_names_the_bad_key() -> None:
    assert filled("ingestion.interaction_only")["rating_field"] == "rating"
    assert filled_model({"architecture": "sasrec"})["d"] == 64
    with pytest.raises(InvalidBlockError, match=r"training\.batch_size = 0: .*greater than or equal to 1"):
        filled("training", {"batch_size": 0})
    with pytest.raises(InvalidBlockError, match=r"compare\.grid: .*'d_model'.*unknown"):
        filled("compare.grid", {"d_model": [1, 2]})


def test_free_form_overrides_are_checked_before_the_run() -> None:
    """compare.training / model_training / evaluation and tune.training are merged onto their block by the
    nodes: a misspelt key or a bad value there fails the check, named, not a node hours into the run."""
    from maf_pipeline.parameters import parameter_errors

    params = _base_parameters()
    assert parameter_errors(params) == []
    params["compare"]["training"] = {"epoch": 3}
    params["compare"]["model_training"] = {"bert4rec": {"early_stopping": {"patience": 0}}}
    params["compare"]["evaluation"] = {"protocl": "sampled"}
    params["tune"]["training"] = {"learning_rate": -1.0}
    errors = parameter_errors(params)
    assert any(e.startswith("compare.training.epoch: unknown parameter") for e in errors), errors
    assert any(
        e.startswith("compare.model_training.bert4rec.early_stopping.patience = 0") and "int >= 1 | None" in e
        for e in errors
    ), errors
    assert any(e.startswith("compare.evaluation.protocl: unknown parameter") for e in errors), errors
    assert any(e.startswith("tune.training.learning_rate = -1.0") for e in errors), errors
