# Two commands a user needs: `make run` (the whole pipeline on the bundled sample) and `make test`.
# Both create .venv and install the pinned requirements on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DO_NOT_TRACK := true
export KEDRO_DISABLE_TELEMETRY := true
export MLFLOW_DISABLE_TELEMETRY := true
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export KEDRO_LOGGING_CONFIG := $(CURDIR)/conf/logging.yml
export NO_MKDOCS_2_WARNING := 1

.PHONY: install run test lint viz mlflow-ui sample docs docs-build

$(STAMP): pyproject.toml requirements.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/kedro run --pipelines=full --env=sample

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

# The documentation site (docs/, mkdocs.yml): served on http://127.0.0.1:8000; docs-build is CI's strict build
docs: $(STAMP)
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

docs-build: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

viz: $(STAMP)
	$(BIN)/kedro viz build

# The tracking store that `kedro run` writes (conf/base/mlflow.yml): open http://127.0.0.1:5000
mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

sample: $(STAMP)
	$(BIN)/python scripts/make_sample.py
