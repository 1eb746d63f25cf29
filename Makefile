# edgeseal developer commands. `make test` and `make demo` do all set-up themselves:
# a virtual environment in .venv, the Python packages, and Mosquitto (apt-get, when root).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PKGS   := edge_protocol edge_agent firmware_bridge broker_config fleet_cli

.PHONY: test demo venv mosquitto sshd lint typecheck pytest tflite-runtime bench fuzz clean

test: venv mosquitto sshd lint typecheck pytest tflite-runtime

demo: venv mosquitto
	$(BIN)/fleet demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

mosquitto:
	@sh tools/ensure-mosquitto.sh

# The `fleet flash --ssh` tests start their own sshd on a free loopback port.
sshd:
	@sh tools/ensure-sshd.sh

lint:
	$(BIN)/ruff check $(PKGS) tests bench tools fuzz
	$(BIN)/ruff format --check $(PKGS) tests bench tools fuzz

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/python -m pytest -q

# The agent's pipeline tests again, under tflite-runtime 2.14 (numpy<2) in a second environment.
tflite-runtime:
	PYTHON=$(PYTHON) sh tools/test-tflite-runtime.sh

bench: venv
	$(BIN)/python bench/run_all.py

# Every fuzz target of fuzz/ for FUZZ_SECONDS each (default 600), atheris or else hypothesis (docs/fuzzing.md).
fuzz: venv
	$(BIN)/python -m fuzz.run

clean:
	rm -rf $(VENV) .venv-tflite .mypy_cache .ruff_cache .pytest_cache
