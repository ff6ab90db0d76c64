"""A clean run log: `kedro run --pipelines=full --env=sample` (what `make run` does) prints only warnings a
user must act on, not library notices repeated on every run (Kedro's type-hint extraction, deprecations)."""

from __future__ import annotations

import re
import typing

import pytest

from tests.conftest import project_pipelines

# What the bundled sample and an offline machine legitimately warn about, each a thing to act on: the sample's
# deliberately bad lines and its corrupt image, and missing pretrained weights (the FEATURES FALLBACK banner).
ACTIONABLE = [
    r"WARNING maf_pipeline\.pipelines\.ingestion\.\w+: .*: skipped \d+ of [\d,]+ lines",
    r"WARNING maf_pipeline\.pipelines\.features\.images: \d+ corrupt or undecodable images",
    r"WARNING maf_pipeline\.pipelines\.features\.encoders: .*no local weights and HF_HUB_OFFLINE",
    r"WARNING maf_pipeline\.pipelines\.features\.encoders: $",  # the banner's first line (it goes on below)
    r"WARNING maf_pipeline\.pipelines\.features\.nodes: Features manifest: \w+: .*(weights|fallback|gt-all)",
]
# Printed once at start-up by kedro-mlflow's import (its KedroPipelineModel has an untyped predict), before
# Kedro loads the project, inside MLflow's own `catch_warnings(simplefilter("once"))`: no project code runs
# early enough to filter it (Kedro refuses project code in the logging config). Not the project's.
KNOWN_LIBRARY_NOTICE = (
    r"mlflow/pyfunc/utils/data_validation\.py:\d+: UserWarning: .*Add type hints to the `predict`"
)
WARNING_LINE = re.compile(r"\bWARNING\b|Warning:|warnings\.warn\(|^\s*warn\(")


def test_every_node_function_has_resolvable_type_hints() -> None:
    """Kedro's parameter validation reads them; an unresolvable hint logs a warning on every run."""
    for pipeline in project_pipelines().values():
        for node in pipeline.nodes:
            typing.get_type_hints(node.func)  # raises NameError for a hint imported only for type checkers


@pytest.mark.slow
def test_the_sample_run_log_has_only_actionable_warnings(full_run) -> None:
    _, proc = full_run
    log = (proc.stdout + proc.stderr).splitlines()
    warnings = [line for line in log if WARNING_LINE.search(line)]
    unexpected = [
        line for line in warnings if not any(re.search(p, line) for p in [*ACTIONABLE, KNOWN_LIBRARY_NOTICE])
    ]
    assert not unexpected, "\n".join(unexpected)
    for noise in ("Could not extract type hints", "No typed parameter requirements", "register_new_resolver",
                  "is deprecated", "not writable"):  # fmt: skip
        assert not any(noise in line for line in log), noise
