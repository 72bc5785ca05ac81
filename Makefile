# Two commands: `make demo` (end-to-end pipeline) and `make test`.
# Both create .venv from the pinned lock file when it is missing or stale.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TFF := tensorflow-federated==0.87.0
OUT ?= runs/demo

.PHONY: venv demo test test-heavy bench clean-venv

venv: $(STAMP)

$(STAMP): requirements/lock.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps $(TFF)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

demo: $(STAMP)
	$(BIN)/recfl run --out $(OUT)

test: $(STAMP)
	$(BIN)/lint-imports --no-logo --no-cache
	$(BIN)/python -m pytest -m "not heavy" -q

test-heavy: $(STAMP)
	$(BIN)/python -m pytest -m heavy -q

bench: $(STAMP)
	$(BIN)/recfl bench

clean-venv:
	rm -rf $(VENV)
