"""Project settings: the config loader and where session data lives."""

import warnings

from kedro.config import OmegaConfigLoader

from maf_pipeline.distributed import RankZeroWritesHook, rank_mlflow_dir
from maf_pipeline.hooks import (
    MlflowReportingHook,
    MlflowStoreHook,
    ParameterSchemaHook,
    RunLockHook,
    mlflow_dir,
)
from maf_pipeline.profiling import RunProfileHook

# kedro-mlflow registers its own hook (one MLflow run per `kedro run`); MlflowReportingHook adds histories,
# artifacts and the MLflow Model. ParameterSchemaHook checks the parameters (maf_pipeline/parameters.py)
# before the first node. Kedro's own typed-parameter validation (Pydantic/dataclass type hints on node inputs)
# is not used: nodes take plain dicts, so conf/logging.yml quiets its "No typed parameter requirements" line.
# RunProfileHook: data/08_reporting/run_profile.json. RunLockHook: one run at a time per data folder.
# Under torchrun (one training on several GPUs) only rank 0 writes datasets and tracks to the project store.
rank_mlflow_dir()
HOOKS = (
    MlflowStoreHook(),
    RunLockHook(),
    ParameterSchemaHook(),
    MlflowReportingHook(),
    RunProfileHook(),
    RankZeroWritesHook(),
)

# A run's log holds only warnings a user must act on: omegaconf 2.4's deprecation of register_new_resolver,
# which kedro and kedro-mlflow call (five times a run), is a library notice no user can act on.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)

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
