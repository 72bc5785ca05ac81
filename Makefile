# Two commands: `make demo` (end-to-end pipeline) and `make test`.
# Both create .venv from the pinned lock file when it is missing or stale.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVICE_VENV := .venv-device
DEVICE_STAMP := $(DEVICE_VENV)/.installed
TFF := tensorflow-federated==0.87.0
OUT ?= runs/demo

.PHONY: venv venv-device demo test test-heavy bench clean-venv

venv: $(STAMP)

# The device side alone (tflite-runtime + numpy, no TensorFlow): the no-TensorFlow test runs the device program there.
venv-device: $(DEVICE_STAMP)

$(DEVICE_STAMP): requirements/device-lock.txt
	@test -x $(DEVICE_VENV)/bin/python || $(PYTHON) -m venv $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/python -m pip install --quiet -r requirements/device-lock.txt
	@touch $@

$(STAMP): requirements/lock.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps $(TFF)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

demo: $(STAMP)
	$(BIN)/recfl run --out $(OUT)

test: $(STAMP) $(DEVICE_STAMP)
	$(BIN)/lint-imports --no-logo --no-cache
	$(BIN)/python -m pytest -m "not heavy" -q

test-heavy: $(STAMP) $(DEVICE_STAMP)
	$(BIN)/python -m pytest -m heavy -q

bench: $(STAMP)
	$(BIN)/recfl bench

clean-venv:
	rm -rf $(VENV) $(DEVICE_VENV)
