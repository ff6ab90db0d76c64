"""The declared schema of the project's parameters (``conf/*/parameters*.yml`` plus ``--params``).

``validate_parameters`` checks every block before the first node runs (``hooks.ParameterSchemaHook``):
types, ranges and unknown keys, so ``--params=preprocessing.k=five`` or a misspelt key fails at once with
the parameter's dotted name, its value and what is allowed, instead of deep inside a node after every
upstream node ran. The schema is also the one source of defaults: ``resolve_parameters`` fills every omitted
key with its default, and the hook hands nodes those filled dictionaries (``params:training`` has every key
of ``Training``), so node code reads ``p["key"]`` and holds no fallback values of its own. Code that calls
the library outside Kedro fills a block with ``filled("training", {...})``.

A new parameter is a new field here (the test suite validates ``conf/base`` and every environment).
Model blocks (``<model>.model``) mirror the constructor arguments of ``maf_pipeline.models.MODELS``
(a test keeps them in step) without importing torch.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from kedro.validation import ParameterValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, lt=1)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")]
Precision = Literal["fp32", "fp16", "bf16"]
StorageDtype = Literal["float32", "float16"]
Modality = Literal["image", "text", "category"]
Metric = Annotated[str, Field(pattern=r"^(recall@\d+|ndcg@\d+|mrr)$")]
DateLike = str | dt.date | None


class InvalidBlockError(ValueError):
    """A block given to :func:`filled` breaks the schema (a line per bad key: dotted name, value, allowed)."""


class Block(BaseModel):
    """A parameter block: strict types (no "5" for 5, no 1.5 for an int), unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)


class DateWindow(Block):
    start: DateLike = None
    end: DateLike = None

    @field_validator("start", "end")
    @classmethod
    def _iso_date(cls, value: DateLike) -> DateLike:
        if isinstance(value, str):
            dt.datetime.fromisoformat(value)  # a date, or an instant with a time; else "Invalid isoformat"
        return value


# ------------------------------------------------------------------ ingestion
class Labels(Block):
    max_words: NonNegativeInt = 8
    max_chars: NonNegativeInt = 80
    drop_sentences: bool = True
    stop_list: list[str] = []


class IngestionMetadata(Block):
    max_text_chars: NonNegativeInt = 20_000
    max_category_labels: NonNegativeInt = 50
    max_image_urls: NonNegativeInt = 20
    category_paths: Literal["all", "longest"] = "all"
    labels: Labels = Labels()
    upgrade_thumbnails: bool = True
    main_category_fallback: bool = False
    include_features: bool = False


class InteractionOnly(Block):
    format: Literal["auto", "recbole", "recbole_split", "user_item", "user_sequence"] = "auto"
    field_separator: str = "\t"
    seq_separator: str = " "
    user_field: str = "user_id"
    item_field: str = "item_id"
    rating_field: str | None = "rating"
    time_field: str | None = "timestamp"
    title_fields: list[str] = ["movie_title", "title", "name"]  # the first present one is the title
    text_fields: list[str] = ["movie_title", "title", "name", "description", "text"]  # all present, joined
    category_fields: list[str] = ["class", "genre", "genres", "categories", "category"]  # labels, in order
    brand_fields: list[str] = ["brand"]
    synthetic_start: DateLike = "2000-01-01"
    synthetic_step_s: PositiveInt = 1
    attributes_suffix: str = "_item2attributes.json"  # sibling <name><suffix>: attribute ids -> categories
    max_bad_fraction: Fraction = 0.01  # user_sequence: share of malformed lines tolerated (counted, skipped)
    first_bad_lines: NonNegativeInt = 10  # malformed line numbers kept for the report and the warning


class Ingestion(Block):
    format: Literal["auto", "2014", "2018", "2023"] = "auto"
    max_bad_fraction: Fraction = 0.01
    block_size_mb: PositiveFloat = 8
    parse_threads: PositiveInt = 2
    detect_lines: PositiveInt = 20
    first_bad_lines: NonNegativeInt = 10
    invalid_utf8: Literal["replace", "skip"] = "replace"
    timestamp_unit: Literal["s", "ms"] | None = None
    metadata: IngestionMetadata = IngestionMetadata()
    interaction_only: InteractionOnly = InteractionOnly()


# -------------------------------------------------------------- preprocessing
class Preprocessing(Block):
    dataset_name: str = ""
    category_labels: list[str] | None = None
    dedup_keep: Literal["first", "last", "all"] = "first"
    required_modalities: list[Modality] = []
    k: PositiveInt = 5
    user_k: PositiveInt | None = None
    item_k: PositiveInt | None = None


class Sequences(Block):
    max_len: PositiveInt = 50
    short_users: Literal["train_only", "drop"] = "train_only"


# ------------------------------------------------------------------- features
class Download(Block):
    workers: PositiveInt = 8
    timeout_s: PositiveFloat = 10
    deadline_s: PositiveFloat = 60
    retries: NonNegativeInt = 3
    backoff_s: NonNegativeFloat = 0.5
    backoff_max_s: NonNegativeFloat = 8
    max_bytes: PositiveInt = 10_000_000
    max_pixels: PositiveInt = 89_478_485
    max_urls_per_item: PositiveInt = 3
    full_size: bool = True
    user_agent: str = ""
    probe_timeout_s: PositiveFloat = 3
    on_unreachable: Literal["fail", "mark_missing"] = "fail"
    allowed_hosts: list[str] = []


class Images(Block):
    source: Literal["local", "url", "file", "none"] = "local"
    download: Download = Download()
    lock_wait_s: NonNegativeFloat | None = 0


class Encoder(Block):
    weights: str = "auto"
    local_weights: str | None = None
    allow_download: bool = True
    download_timeout_s: PositiveFloat = 5
    batch_size: PositiveInt = 32
    device: Device = "auto"
    precision: Precision = "fp32"
    storage_dtype: StorageDtype = "float32"


class ImageEncoder(Encoder):
    arch: Annotated[str, Field(pattern=r"^vgg\d+(_bn)?$")] = "vgg16"
    input_size: Annotated[int, Field(ge=32)] = 224
    resize_size: Annotated[int, Field(ge=32)] | None = None
    num_workers: NonNegativeInt = 0


class TextEncoder(Encoder):
    source: Literal["encoder", "file"] = "encoder"
    model_name: str = "bert-base-uncased"
    pooling: Literal["cls", "mean", "pooler"] = "cls"
    normalize: bool = False
    max_tokens: Annotated[int, Field(ge=1, le=512)] = 256


class Categories(Block):
    min_frequency: PositiveInt = 1
    drop_universal: bool = True
    max_labels: PositiveInt | None = None
    storage_dtype: StorageDtype = "float32"


class Cache(Block):
    enabled: bool = True
    flush_every: PositiveInt = 1024
    lock_wait_s: NonNegativeFloat | None = 0


class Features(Block):
    images: Images = Images()
    image_encoder: ImageEncoder = ImageEncoder()
    text_encoder: TextEncoder = TextEncoder()
    categories: Categories = Categories()
    cache: Cache = Cache()


# ------------------------------------------------------- training, evaluation
class EarlyStopping(Block):
    metric: Metric = "ndcg@20"
    patience: PositiveInt | None = 10


class Training(Block):
    epochs: PositiveInt = 200
    batch_size: PositiveInt = 256
    length_grouping: NonNegativeInt = 0
    learning_rate: PositiveFloat = 1e-4
    weight_decay: NonNegativeFloat = 0.0
    grad_clip: PositiveFloat | None = None
    objective: Literal["all_positions", "last_position"] = "all_positions"
    early_stopping: EarlyStopping = EarlyStopping()
    ks: list[PositiveInt] = [10, 20]
    mask_history: bool = False  # validation (early stopping, tune) without the user's earlier items
    loss_mask_history: bool = False  # each target's softmax without the earlier items of its window
    loss: Literal["full", "sampled_softmax"] = "full"
    loss_chunk_size: PositiveInt | None = 32768
    num_negatives: PositiveInt = 256
    negative_sampling: Literal["uniform", "popularity"] = "uniform"
    eval_batch_size: PositiveInt = 1024
    eval_max_scores: PositiveInt = 268435456
    device: Device = "auto"
    bf16: bool = False
    compile: bool | str = False
    num_threads: PositiveInt | None = None
    distributed: bool | Literal["auto"] = "auto"
    checkpoint_every: PositiveInt | Literal["auto"] | None = "auto"
    checkpoint_dir: str | None = None  # None: no checkpoints (conf/base: <data_dir>/06_models/checkpoints)
    keep_checkpoint: bool = False
    lock_wait_s: NonNegativeFloat | None = 0


class Evaluation(Block):
    protocol: Literal["full", "sampled"] = "full"
    num_negatives: PositiveInt = 100
    mask_history: bool = False
    ks: list[PositiveInt] = [10, 20]
    batch_size: PositiveInt = 1024
    max_scores: PositiveInt = 268435456
    device: Device = "auto"


# ---------------------------------------------------------------- model blocks
class ModelBlock(Block):
    architecture: str


class AttentionModel(ModelBlock):
    d: PositiveInt = 64
    n_layers: PositiveInt = 2
    n_heads: PositiveInt = 2
    d_ff: PositiveInt = 256
    dropout: Probability = 0.5
    attn_dropout: Probability = 0.5
    layer_norm_eps: PositiveFloat = 1e-12
    init_std: PositiveFloat = 0.02

    @model_validator(mode="after")
    def _heads_divide_d(self) -> AttentionModel:
        if self.d % self.n_heads:
            raise ValueError(f"d ({self.d}) must be divisible by n_heads ({self.n_heads})")
        return self


class SASRecBlock(AttentionModel):
    architecture: Literal["sasrec"]
    fused_attention: bool = True


class BERT4RecBlock(AttentionModel):
    architecture: Literal["bert4rec"]
    mask_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.2
    last_only_ratio: Fraction = 0.1


class FeatureModel(AttentionModel):
    modalities: list[Modality] = ["image", "text", "category"]


class SASRecFBlock(FeatureModel):
    architecture: Literal["sasrecf"]


class FDSABlock(FeatureModel):
    architecture: Literal["fdsa"]


class MAFBlock(FeatureModel):
    architecture: Literal["maf"]
    fused_attention: bool = True
    d_mm: PositiveInt = 32
    fusion: Literal["sum", "concat", "gate"] = "sum"
    scale: Literal["head", "model"] = "head"
    multitask: bool = True
    mtl_lambda: NonNegativeFloat = 1.0
    mtl_normalize: Literal["constant", "none"] = "constant"
    side_values: bool = False  # E_m also in the attention values (issue 12 lever)
    mm_dropout: Probability = 0.0  # dropout on E_m (issue 12 lever)

    @model_validator(mode="after")
    def _d_mm_fits(self) -> MAFBlock:
        if self.d_mm > self.d or self.d_mm % self.n_heads:
            raise ValueError(f"d_mm ({self.d_mm}) must be <= d ({self.d}) and divisible by n_heads")
        return self


class GRU4RecBlock(ModelBlock):
    architecture: Literal["gru4rec"]
    embedding_size: PositiveInt = 64
    hidden_size: PositiveInt = 128
    num_layers: PositiveInt = 1
    dropout: Probability = 0.3


class CaserBlock(ModelBlock):
    architecture: Literal["caser"]
    d: PositiveInt = 64
    L: PositiveInt = 5
    nh: PositiveInt = 16
    nv: PositiveInt = 4
    dropout: Probability = 0.4
    reg_weight: NonNegativeFloat = 1e-4


#: Parameter schema of each architecture's block, by architecture name (= ``maf_pipeline.models.MODELS``).
MODEL_BLOCKS: dict[str, type[ModelBlock]] = {
    "maf": MAFBlock,
    "sasrec": SASRecBlock,
    "gru4rec": GRU4RecBlock,
    "caser": CaserBlock,
    "bert4rec": BERT4RecBlock,
    "sasrecf": SASRecFBlock,
    "fdsa": FDSABlock,
}


class ModelParams(Block):
    model: dict[str, Any]


# -------------------------------------------------------- reporting, recommend
class Attention(Block):
    positions: PositiveInt = 15
    layer: int = -1
    head: Literal["mean"] | NonNegativeInt = "mean"
    user: str | None = None


class Reporting(Block):
    attention: Attention = Attention()
    histogram_bins: PositiveInt = 40


class Recommend(Block):
    k: PositiveInt = 10
    users: list[str] | str | None = None
    exclude_seen: bool = True
    batch_size: PositiveInt = 256
    device: Device = "auto"

    @field_validator("users")
    @classmethod
    def _not_empty(cls, value: list[str] | str | None) -> list[str] | str | None:
        if value is not None and not (value.split() if isinstance(value, str) else value):
            raise ValueError("an empty list of users would write an empty output; use null for every user")
        return value


class Serving(Block):
    log_model: bool = True
    models: list[str] = ["maf"]
    artifact_path: Annotated[str, Field(pattern=r"^[\w.\-]+$")] = "model"
    registered_model_name: str | None = None
    k: PositiveInt = 10


# -------------------------------------------------------------------- compare
class Grid(Block):
    """The paper's grid (d', lambda, F); any other key is one more axis: a list of values of that MAF key."""

    model_config = ConfigDict(extra="allow", strict=True)
    enabled: bool = False
    d_mm: list[PositiveInt] = []
    mtl_lambda: list[Annotated[int | float, Field(ge=0)]] = []  # 5 stays 5: the grid's labels show it
    fusion: list[Literal["sum", "concat", "gate"]] = []
    seeds: list[int] | None = None
    metric: Metric = "ndcg@20"
    fixed: dict[str, Any] = {}

    @model_validator(mode="after")
    def _axes_are_maf_keys(self) -> Grid:
        extra = self.model_extra or {}
        unknown = sorted(k for k in extra if k not in MAFBlock.model_fields or k == "architecture")
        if unknown:
            raise ValueError(f"{unknown}: unknown parameter(s); an extra grid key is an axis over a MAF key")
        if not_lists := sorted(k for k, v in extra.items() if not isinstance(v, list)):
            raise ValueError(f"{not_lists}: a grid axis is a list of values")
        return self


class Parallel(Block):
    workers: PositiveInt | Literal["auto"] | None = "auto"
    runs_per_gpu: PositiveInt = 1


class Compare(Block):
    parallel: Parallel = Parallel()
    models: list[str] = []
    seeds: list[int] = [42]
    protocols: Annotated[list[Literal["full", "sampled"]], Field(min_length=1)] = ["full"]
    metrics: Annotated[list[Metric], Field(min_length=1)] = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]
    figure_metrics: Annotated[list[Metric], Field(min_length=1)] = ["recall@20", "ndcg@20"]
    training: dict[str, Any] = {}
    model_training: dict[str, dict[str, Any]] = {}
    evaluation: dict[str, Any] = {}
    fusion: dict[str, dict[str, Any]] = {}
    multitask: dict[str, dict[str, Any]] = {}
    modalities: dict[str, dict[str, Any]] = {}
    grid: Grid = Grid()


class Run(Block):
    lock_wait_s: NonNegativeFloat | None = 0
    mlflow_busy_timeout_s: NonNegativeFloat | None = 60


# ----------------------------------------------------------------------- tune
class Pruner(Block):
    type: Literal["median", "percentile", "none"] = "median"
    n_startup_trials: NonNegativeInt = 5
    n_warmup_steps: NonNegativeInt = 5
    interval_steps: PositiveInt = 1
    percentile: Annotated[float, Field(gt=0, lt=100)] | None = None


class Tune(Block):
    model: str = "maf"
    study_name: str = "maf"
    metric: Metric | None = None
    n_trials: PositiveInt = 30
    timeout_s: PositiveFloat | None = None
    seeds: list[int] | None = None
    n_startup_trials: NonNegativeInt = 10
    pruner: Pruner = Pruner()
    training: dict[str, Any] = {}
    mlflow: bool = True
    enqueue: list[dict[str, Any]] = []
    space: dict[str, dict[str, Any]] = {}
    model_space: dict[str, dict[str, dict[str, Any]]] = {}


#: Top-level blocks and their schema; a model block (``<name>: {model: {...}}``) is checked per architecture.
BLOCKS: dict[str, Any] = {
    "seed": Annotated[int, Field(ge=0)],
    "date_window": DateWindow,
    "ingestion": Ingestion,
    "preprocessing": Preprocessing,
    "sequences": Sequences,
    "features": Features,
    "training": Training,
    "evaluation": Evaluation,
    "reporting": Reporting,
    "recommend": Recommend,
    "serving": Serving,
    "compare": Compare,
    "tune": Tune,
    "run": Run,
}


class Parameters(Block):
    """All blocks; model blocks are validated in ``_check_model_blocks``."""

    seed: Annotated[int, Field(ge=0)] = 42
    date_window: DateWindow = DateWindow()
    ingestion: Ingestion = Ingestion()
    preprocessing: Preprocessing = Preprocessing()
    sequences: Sequences = Sequences()
    features: Features = Features()
    training: Training = Training()
    evaluation: Evaluation = Evaluation()
    reporting: Reporting = Reporting()
    recommend: Recommend = Recommend()
    serving: Serving = Serving()
    compare: Compare = Compare()
    tune: Tune = Tune()
    run: Run = Run()


def _allowed(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """What the field at ``loc`` accepts (its type and bounds), for the error message."""
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            break
        field = fields[part]
        inner = field.annotation
        candidates = [inner, *getattr(inner, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            break
    if field is None:
        return ""
    bounds = " ".join(
        f"{op} {getattr(m, attr)}"
        for m in field.metadata
        for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("pattern", "matching"))
        if getattr(m, attr, None) is not None
    )
    return f"{_type_text(field.annotation)}{' ' + bounds if bounds else ''}"


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("pattern", "matching"))


def _type_text(annotation: Any) -> str:
    """``int >= 1 | None`` for ``Annotated[int, Ge(1)] | None``: the type as a user reads it."""
    if annotation is type(None):
        return "None"
    if get_origin(annotation) is Annotated:
        base, *meta = get_args(annotation)
        flat = [c for m in meta for c in (getattr(m, "metadata", None) or [m])]  # Field(ge=1) holds Ge(1)
        bounds = [
            f"{op} {getattr(c, a)}" for c in flat for a, op in _BOUNDS if getattr(c, a, None) is not None
        ]
        return " ".join([_type_text(base), *bounds])
    if get_origin(annotation) in (Union, UnionType):
        return " | ".join(_type_text(a) for a in get_args(annotation))
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _messages(error: ValidationError, schema: type[BaseModel], prefix: tuple[Any, ...]) -> list[str]:
    out = []
    for err in error.errors():
        loc = tuple(
            p
            for p in err["loc"]
            if not (isinstance(p, str) and ("[" in p or "-" in p or p.startswith("function")))
        )
        name = ".".join(str(p) for p in (*prefix, *loc))
        if err["type"] == "extra_forbidden":
            parent = schema
            for part in loc[:-1]:
                fields = getattr(parent, "model_fields", {})
                ann = fields[part].annotation if part in fields else None
                parent = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            known = sorted(getattr(parent, "model_fields", {})) if parent else []
            out.append(f"{name}: unknown parameter{f' (known here: {known})' if known else ''}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if not loc or (err["type"] == "value_error" and isinstance(err.get("input"), dict)):
            out.append(f"{name}: {msg}")  # a check across fields of the block
            continue
        allowed = _allowed(schema, loc)
        out.append(f"{name} = {err.get('input')!r}: {msg}{f' (allowed: {allowed})' if allowed else ''}")
    return out


def _check_model_blocks(params: dict[str, Any]) -> list[str]:
    errors = []
    for name, block in params.items():
        if name in BLOCKS:
            continue
        if not (isinstance(block, dict) and isinstance(block.get("model"), dict)):
            errors.append(
                f"{name}: unknown parameter block (known: {sorted(BLOCKS)} and model blocks "
                f"<name>: {{model: {{architecture: ...}}}})"
            )
            continue
        if set(block) != {"model"}:
            errors.append(f"{name}: unknown parameter(s) {sorted(set(block) - {'model'})} next to 'model'")
        model = block["model"]
        arch = model.get("architecture")
        if arch not in MODEL_BLOCKS:
            errors.append(f"{name}.model.architecture = {arch!r}: not one of {sorted(MODEL_BLOCKS)}")
            continue
        try:
            MODEL_BLOCKS[arch].model_validate(model)
        except ValidationError as err:
            errors += _messages(err, MODEL_BLOCKS[arch], (name, "model"))
    return errors


def _metric_k(metric: str) -> int | None:
    return int(metric.partition("@")[2]) if "@" in metric else None


def _check_metrics(where: str, metrics: list[str], ks: list[int], ks_name: str) -> list[str]:
    """Metrics at a cut-off the evaluation does not compute select nothing (a table would lack them)."""
    missing = [m for m in metrics if (k := _metric_k(m)) is not None and k not in ks]
    if not missing:
        return []
    return [f"{where} = {missing}: no such metric, {ks_name} is {ks} (add the cut-off there, or use mrr)"]


def _check_variants(params: dict[str, Any]) -> list[str]:
    """compare's MAF variants (Tables 3-4, Fig. 3 columns) and grid settings against the MAF schema."""
    compare, errors = params.get("compare") or {}, []
    maf = (params.get("maf") or {}).get("model") or {"architecture": "maf"}
    families = {f: compare.get(f) or {} for f in ("fusion", "multitask", "modalities")}
    families["grid.fixed"] = {"fixed": (compare.get("grid") or {}).get("fixed") or {}}
    for family, variants in families.items():
        for label, overrides in variants.items():
            where = f"compare.{family}" + ("" if family == "grid.fixed" else f".{label}")
            unknown = sorted(set(overrides or {}) - set(MAFBlock.model_fields))
            if unknown:
                known = sorted(set(MAFBlock.model_fields) - {"architecture"})
                errors.append(f"{where}: {unknown} are not MAF parameters (known: {known})")
                continue
            try:
                MAFBlock.model_validate({**maf, **(overrides or {})})
            except ValidationError as err:
                errors += _messages(err, MAFBlock, tuple(where.split(".")))
    return errors


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


def _check_overrides(params: dict[str, Any]) -> list[str]:
    """The free-form overrides of the training and evaluation blocks (``compare.training``,
    ``compare.model_training.<model>``, ``compare.evaluation``, ``tune.training``), merged onto the block as
    the nodes do, against its schema: a misspelt key would otherwise stop a node after hours of other runs."""
    compare, tune = params.get("compare") or {}, params.get("tune") or {}
    training, evaluation = params.get("training") or {}, params.get("evaluation") or {}
    checks = [
        ("compare.training", Training, training, compare.get("training")),
        ("compare.evaluation", Evaluation, evaluation, compare.get("evaluation")),
        ("tune.training", Training, training, tune.get("training")),
    ]
    for model, override in (compare.get("model_training") or {}).items():
        checks.append((f"compare.model_training.{model}", Training, training, override))
    errors = []
    for where, schema, base, override in checks:
        if not isinstance(override, dict) or not override:
            continue
        try:
            schema.model_validate(_merged(base, override))
        except ValidationError as err:
            errors += _messages(err, schema, tuple(where.split(".")))
    return errors


def _check_names(params: dict[str, Any]) -> list[str]:
    """Every name that selects something (models, metrics, variants) against what exists: a name that selects
    nothing would run for minutes and leave a table short without saying so."""
    errors = []
    compare, tune = params.get("compare") or {}, params.get("tune") or {}
    blocks = sorted(k for k, v in params.items() if k not in BLOCKS and isinstance(v, dict) and "model" in v)
    valid_models = sorted({"pop", *MODEL_BLOCKS})
    unknown = [m for m in compare.get("models") or [] if m not in valid_models]
    if unknown:
        errors.append(f"compare.models = {unknown}: unknown model(s) (valid: {valid_models})")
    missing = [m for m in compare.get("models") or [] if m in MODEL_BLOCKS and m not in blocks]
    if missing:
        errors.append(f"compare.models = {missing}: no params:<model>.model block (blocks: {blocks})")
    for where, names in (("serving.models", (params.get("serving") or {}).get("models") or []),
                         ("tune.model", [tune["model"]] if tune.get("model") else [])):  # fmt: skip
        if bad := [n for n in names if n not in blocks]:
            errors.append(f"{where} = {bad}: no such model block (blocks: {blocks})")
    evaluation = {**(params.get("evaluation") or {}), **(compare.get("evaluation") or {})}
    training = params.get("training") or {}
    eval_ks = list(evaluation.get("ks") or [10, 20])
    train_ks = list(training.get("ks") or [10, 20])
    errors += _check_metrics("compare.metrics", list(compare.get("metrics") or []), eval_ks, "evaluation.ks")
    errors += _check_metrics("compare.figure_metrics", list(compare.get("figure_metrics") or []), eval_ks,
                             "evaluation.ks")  # fmt: skip
    stop = [(training.get("early_stopping") or {}).get("metric") or "ndcg@20"]
    errors += _check_metrics("training.early_stopping.metric", stop, train_ks, "training.ks")
    if tune.get("metric"):
        errors += _check_metrics("tune.metric", [tune["metric"]], train_ks, "training.ks")
    grid = compare.get("grid") or {}
    if grid.get("enabled"):
        errors += _check_metrics(
            "compare.grid.metric", [grid.get("metric") or "ndcg@20"], eval_ks, "evaluation.ks"
        )
    return errors + _check_variants(params) + _check_overrides(params)


def parameter_errors(params: dict[str, Any]) -> list[str]:
    """Every problem of ``params`` (the merged parameters of a run), one message each; [] when valid."""
    errors = []
    known = {k: v for k, v in params.items() if k in BLOCKS}
    try:
        Parameters.model_validate(known)
    except ValidationError as err:
        errors += _messages(err, Parameters, ())
    errors += _check_model_blocks(params)
    return errors if errors else _check_names(params)


def filled(block: str, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The block at dotted path ``block`` ("training", "ingestion.interaction_only") validated, with every
    omitted key at the schema's default; ``InvalidBlockError`` (a ``ValueError``) names each bad key."""
    schema: Any = Parameters
    for part in block.split("."):
        schema = schema.model_fields[part].annotation
    try:
        return schema.model_validate(dict(values or {})).model_dump()
    except ValidationError as err:
        raise InvalidBlockError("\n".join(_messages(err, schema, tuple(block.split("."))))) from None


def filled_model(values: Mapping[str, Any]) -> dict[str, Any]:
    """A model block (``<name>.model``) validated against its architecture's schema, defaults filled in."""
    arch = values.get("architecture")
    if arch not in MODEL_BLOCKS:
        raise ValueError(f"model block architecture {arch!r}: not one of {sorted(MODEL_BLOCKS)}")
    return MODEL_BLOCKS[arch].model_validate(dict(values)).model_dump()


def resolve_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """The run's parameters as nodes receive them: validated (``ParameterValidationError`` otherwise), every
    block and model block complete with the schema's defaults."""
    validate_parameters(dict(params))
    known = {k: v for k, v in params.items() if k in BLOCKS}
    out = Parameters.model_validate(known).model_dump()
    for name, block in params.items():
        if name not in BLOCKS:
            out[name] = {"model": filled_model(block["model"])}
    return out


def validate_parameters(params: dict[str, Any]) -> None:
    """Raise ``ParameterValidationError`` naming every bad parameter (dotted name, value, what is allowed)."""
    errors = parameter_errors(params)
    if errors:
        raise ParameterValidationError(
            "Invalid parameters (schema: src/maf_pipeline/parameters.py):\n"
            + "\n".join(f"- {e}" for e in errors)
        )
