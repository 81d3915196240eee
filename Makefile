# Two jobs a newcomer needs: `make demo` (a run of the embedded model, on CPU, no download) and
# `make test`. Both build the virtual environment first, with the CPU build of torch.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
PROMPT ?= a red circle above a blue square on a yellow background

.PHONY: demo test test-fast lint wheel-smoke serve clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,dev]"
	$(BIN)/python -m pip install -q --no-deps open_clip_torch==2.32.0
	touch $@

demo: $(VENV)/.installed
	rm -rf out/demo out/demo.stepx  # the demo's own output: a second make demo starts afresh (record and export never write over)
	$(BIN)/stepx record "$(PROMPT)" --seed 3 -o out/demo.stepx --export out/demo

test: $(VENV)/.installed
	bash scripts/system-deps.sh
	bash td_components/ci_td_env.sh $(VENV)-td
	$(BIN)/python -m pytest -q

# the inner loop: everything but the tests marked slow (under two minutes on a quiet 2-core machine)
test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

# the built wheel in a fresh venv outside the checkout: stepx record, preview --out x.mp4, doctor
wheel-smoke:
	bash .ci/wheel-smoke.sh $(PY)

serve: $(VENV)/.installed
	$(BIN)/stepx -v serve --zmq --osc 127.0.0.1:7000

clean:
	rm -rf out .pytest_cache
