"""Shared fixtures: a throw-away copy of the project in which the real pipelines run end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLES = REPO.parent / "shared" / "data" / "amazon-2018-samples"

# Nothing in the tests may phone home or reach a model hub.
for _name, _value in {
    "DO_NOT_TRACK": "true",
    "KEDRO_DISABLE_TELEMETRY": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}.items():
    os.environ.setdefault(_name, _value)

# Runtime overrides (kedro --params) that make the end-to-end run fast on two CPU cores while exercising
# every node. Each entry is a dotted parameter key; pipeline owners keep them in step with their parameters.
E2E_PARAMS: dict[str, object] = {
    "features.image_encoder.input_size": 64,  # VGG16 at 64 px: same code path, ~12x less compute than 224
    "training.epochs": 12,
}


def project_pipelines() -> dict:
    """Every registered pipeline, as ``kedro run`` without a selection sees them (the registry uses Kedro's
    ``find_pipelines``, which needs the configured project; configuring it also clears any earlier selection
    such as ``pipelines.set_requested(["data"])``)."""
    from kedro.framework.project import configure_project, pipelines

    configure_project("maf_pipeline", preserve_logging=True)
    return dict(pipelines)


def copy_project(dest: Path) -> Path:
    """Copy what a Kedro run needs (package metadata, conf, the bundled sample) into ``dest``.

    The copy has its own ``data/``, and its MLflow store is the session's temporary one (``mlflow_dir``
    below), so tests never write into the developer's project.
    """
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    (dest / "src").mkdir(exist_ok=True)  # kedro insists on <project>/src; the code is the installed package
    shutil.copytree(REPO / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir(exist_ok=True)
    for layer in sorted(p.name for p in (REPO / "data").iterdir() if p.is_dir()):
        (dest / "data" / layer).mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        REPO / "data" / "01_raw" / "sample", dest / "data" / "01_raw" / "sample", dirs_exist_ok=True
    )
    return dest


def kedro(project: Path, *args: str, params: dict[str, object] | None = None, timeout: int = 900):
    """Run the ``kedro`` CLI of this interpreter inside ``project`` and fail with its output if it fails."""
    cmd = [sys.executable, "-m", "kedro", *args]
    if params:
        cmd += ["--params", ",".join(f"{k}={v}" for k, v in params.items())]
    env = {**os.environ, "KEDRO_LOGGING_CONFIG": str(REPO / "conf" / "logging.yml"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        command = " ".join(args)
        pytest.fail(
            f"`kedro {command}` failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The whole ``full`` pipeline, run once per test session on the bundled sample in a project copy."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    proc = kedro(project, "run", "--pipelines=full", "--env=sample", params=E2E_PARAMS)
    return project, proc


@pytest.fixture(scope="session", autouse=True)
def mlflow_dir(tmp_path_factory: pytest.TempPathFactory):
    """A temporary MLflow store (``mlflow.db`` + ``mlartifacts/``) for the whole session.

    ``conf/base/mlflow.yml`` puts the store in ``$MAF_MLFLOW_DIR`` when set (else the project root), and both
    in-process Kedro sessions and ``kedro`` subprocesses (which inherit the environment) read it, so no test
    writes into the developer's tracking store.
    """
    folder = tmp_path_factory.mktemp("mlflow")
    previous = os.environ.get("MAF_MLFLOW_DIR")
    os.environ["MAF_MLFLOW_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("MAF_MLFLOW_DIR", None)
    else:
        os.environ["MAF_MLFLOW_DIR"] = previous
