# Developer entry points. `make serve` and `make test` each set up what they need first.
PYTHON ?= $(shell command -v python3.11 >/dev/null 2>&1 && echo python3.11 || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo serve test lint bench clean

# The package is installed in editable mode, so only a change of its dependencies or entry points (in
# these two files) needs pip again; the stamp file records the last install.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-lock.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check -c requirements-lock.txt -e '.[test]'
	@touch $@

demo: setup
	$(BIN)/butler demo

serve: setup
	$(BIN)/butler serve -c config/butler-example.yaml

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/mypy --platform win32

test: setup lint
	@scripts/ensure-test-services
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/rest_core.py
	$(BIN)/python bench/qliksim_throughput.py
	$(BIN)/python bench/key_value.py
	$(BIN)/python bench/task_start.py
	$(BIN)/python bench/mqtt.py
	$(BIN)/python bench/files.py
	$(BIN)/python bench/app_dump.py
	$(BIN)/python bench/slow_clients.py
	$(BIN)/python bench/metrics.py
	$(BIN)/python bench/monitors.py
	$(BIN)/python bench/log_files.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
