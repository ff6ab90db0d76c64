"""Project settings: the config loader and where session data lives."""

from kedro.config import OmegaConfigLoader

from maf_pipeline.distributed import RankZeroWritesHook, rank_mlflow_dir
from maf_pipeline.hooks import MlflowReportingHook, mlflow_dir
from maf_pipeline.profiling import RunProfileHook

# kedro-mlflow registers its own hook (one MLflow run per `kedro run`); this one adds histories and artifacts.
# Under torchrun (one training on several GPUs) only rank 0 writes datasets and tracks to the project store.
rank_mlflow_dir()
# RunProfileHook: data/08_reporting/run_profile.json
HOOKS = (MlflowReportingHook(), RunProfileHook(), RankZeroWritesHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # ${mlflow_dir:} in mlflow.yml: the project root, or $MAF_MLFLOW_DIR (tests use a temporary folder)
    "custom_resolvers": {"mlflow_dir": mlflow_dir},
    # An environment's parameters are deep-merged over base. With Kedro's default (top-level keys replaced),
    # `kedro run --env=sample --params=features.image_encoder.input_size=64` would replace the whole base
    # `features` block by {image_encoder: {input_size: 64}}: runtime params land in the env layer.
    "merge_strategy": {"parameters": "soft"},
}
