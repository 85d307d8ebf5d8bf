# The commands of README.md: `make demo`, `make test`, `make test-fast`, `make test-faults`.
# Each installs what it needs.
VENV ?= .venv
PYTHON ?= python3.11
BIN := $(VENV)/bin

.PHONY: install demo test test-fast test-faults test-hosts lint check
.DEFAULT_GOAL := test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip uv==0.9.5

# Reinstall only when the dependencies change. The serve extra too: the model-server tests
# run against a real kserve server process; and deploy: test_deploy_*.py build run pods' Jobs
# with dagster-k8s and validate the manifests offline.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	bash scripts/install_system_deps.sh
	bash scripts/install_python_deps.sh $(VENV) -e '.[dev,serve,deploy]'
	touch $@

# dagster-dbt loads the dbt manifest; prepare it (dagster-dbt's `dbt parse`) whenever the
# dbt project changes. `dagster dev` prepares it itself (DbtProject.prepare_if_dev).
DBT_MANIFEST := dbt_project/target/manifest.json
$(DBT_MANIFEST): $(VENV)/.installed farm_platform/analytics/dbt_project.py \
		dbt_project/dbt_project.yml dbt_project/profiles.yml \
		$(shell find dbt_project/models dbt_project/macros dbt_project/seeds dbt_project/tests -type f 2>/dev/null)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dagster-dbt project prepare-and-package \
		--file farm_platform/analytics/dbt_project.py

install: $(VENV)/.installed $(DBT_MANIFEST)

demo: install
	$(BIN)/farm-platform demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two pytest workers, one module each, longest modules first (conftest.py): the daemon
# tests mostly wait on ticks and runs, which is why two pay on two cores. A third measured
# slower (pytest 21:38 against 20:56 and 18:36: the load average reached 12).
PYTEST_PARALLEL := -n 2 --dist loadfile --no-loadscope-reorder

# Every test but the long fault campaign: each guarantee (faults, end-to-end stories, the UI).
test: lint
	$(BIN)/pytest $(PYTEST_PARALLEL) -m "not fault_campaign and not hosts"

# Unit and in-process tests: no daemon, no browser, no long dbt builds. After each change.
test-fast: install
	$(BIN)/pytest $(PYTEST_PARALLEL) -m "not slow and not fault_campaign and not hosts"

# The long faults on the production topology (a paused code server, minutes of model-server
# outage, ...): each takes minutes of waiting, so they run on demand, one at a time.
test-faults: install
	$(BIN)/pytest -m fault_campaign

# The production topology across network namespaces (root only): a day graded end to end
# across seven hosts, and the faults between them. Minutes each, on demand.
test-hosts: install
	$(BIN)/pytest -m hosts

# Data-quality gate: the suites and dbt tests on a clean simulated farm and on corrupted
# copies; fails unless the clean data passes and every corruption is caught. The gate runs
# the compiled suites: first, that they are compiled from the suites as they are now.
check: install
	$(BIN)/python -m farm_platform.quality.compile --check
	$(BIN)/farm-platform check
