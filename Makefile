# ckpt-tool developer commands. Everything runs inside .venv (made by `make install`).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONHASHSEED := 0

.PHONY: install test lint format fixtures bench bench-remote fuzz clean

install:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[tf,dev]'

test:
	$(PY) -m pytest -q -n auto --maxprocesses=4

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Model Garden pins an older TensorFlow: install it without its pins, with the two
# runtime packages its encoders import.
fixtures:
	$(PY) -m pip install --quiet --no-deps 'tf-models-official==2.20.*' 'gin-config==0.5.*' scipy
	$(PY) fixtures/generate.py
	$(PY) fixtures/hf/generate.py
	$(PY) fixtures/keras_hub/generate.py
	$(PY) fixtures/model_garden/generate.py
	$(PY) fixtures/causal/generate.py
	$(PY) fixtures/graph/generate.py

bench:
	$(PY) bench/run.py

# list and export from a local S3 server (SeaweedFS) against the local copy; see README
bench-remote:
	$(PY) bench/bench_remote.py

# Long fuzz of the readers with damaged fixtures (>= 10 minutes on 2 cores):
# CKPT_FUZZ_EXAMPLES cases per target; prints the outcomes per target at the end.
CKPT_FUZZ_EXAMPLES ?= 5000
fuzz:
	CKPT_FUZZ_EXAMPLES=$(CKPT_FUZZ_EXAMPLES) $(PY) -m pytest -q -s tests/test_fuzz.py

clean:
	rm -rf build *.egg-info .pytest_cache
