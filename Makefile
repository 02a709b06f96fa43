# The README's quick start: `make demo` and `make test`. Both install into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# A second environment on Python 3.13 with the real Functions worker library, for the check that
# indexes function_app.py as the host does (requirements-worker.txt). Without a 3.13 interpreter the
# check is skipped locally and fails under CI=true.
PY313 ?= $(shell .ci/python313)
WORKER_VENV := .venv-worker
WORKER_STAMP := $(WORKER_VENV)/.installed

.PHONY: demo test lint bench serve clean worker-env medplum-env azurite-env

# Medplum's FHIR router for the tests that run against a third-party FHIR server
# (tests/medplum/, pinned by its package-lock.json). Without npm it is not installed and those tests
# skip locally; under CI=true they fail (tests/support/medplum.py).
MEDPLUM_DIR := tests/medplum
MEDPLUM_STAMP := $(MEDPLUM_DIR)/node_modules/.installed

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

$(WORKER_STAMP): requirements-worker.txt requirements.txt
	@test -n "$(PY313)" || { echo "worker-env: no Python 3.13 interpreter found (.ci/python313)"; exit 1; }
	$(PY313) -m venv $(WORKER_VENV)
	grep -v '^azure-functions==' requirements.txt > $(WORKER_VENV)/app-requirements.txt
	$(WORKER_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-worker.txt -r $(WORKER_VENV)/app-requirements.txt
	touch $@

worker-env: $(WORKER_STAMP)

$(MEDPLUM_STAMP): $(MEDPLUM_DIR)/package.json $(MEDPLUM_DIR)/package-lock.json
	cd $(MEDPLUM_DIR) && npm ci --no-audit --no-fund --silent
	touch $@

medplum-env: $(MEDPLUM_STAMP)

MEDPLUM_DEP := $(if $(shell command -v npm),$(MEDPLUM_STAMP),)

# Azurite (the Azure Storage emulator) for the Blob destination tests (tests/azurite/, pinned by its
# package-lock.json to 3.35.0, the last release that runs on Node 20). Without npm the tests skip
# locally and fail under CI=true (tests/support/azurite.py).
AZURITE_DIR := tests/azurite
AZURITE_STAMP := $(AZURITE_DIR)/node_modules/.installed

$(AZURITE_STAMP): $(AZURITE_DIR)/package.json $(AZURITE_DIR)/package-lock.json
	cd $(AZURITE_DIR) && npm ci --no-audit --no-fund --silent
	touch $@

azurite-env: $(AZURITE_STAMP)

AZURITE_DEP := $(if $(shell command -v npm),$(AZURITE_STAMP),)

# The worker env is built only where a 3.13 interpreter exists (the check says why it skipped).
WORKER_DEP := $(if $(PY313),$(WORKER_STAMP),)

demo: $(STAMP)
	$(BIN)/vigil demo

test: $(STAMP) $(WORKER_DEP) $(MEDPLUM_DEP) $(AZURITE_DEP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py

serve: $(STAMP)
	$(BIN)/vigil serve

clean:
	rm -rf $(VENV) $(WORKER_VENV) $(MEDPLUM_DIR)/node_modules $(AZURITE_DIR)/node_modules .vigil .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
