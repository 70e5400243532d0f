# One command to set up and run: `make demo` or `make test` on a fresh clone.
# torch is installed first, as TORCH_SPEC says, so that pip never pulls a build you did not
# choose: torch==2.13.0 is a CPU build where the index carries one (as here); on plain PyPI use
# TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu".
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.gradtool-installed

.PHONY: install demo monitor-demo test lint format clean

# The dev extra brings what the tests need, Lightning, transformers and TensorBoard included; a
# constraint pins the torch installed first, so that none of them replaces it.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-pin.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c $(VENV)/torch-pin.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gradtool inspect samples/multitask.py
	$(BIN)/gradtool pareto samples/multitask.py

# Train the multitask sample with a gradtool.Monitor, then report on the run (and redraw the
# README's figures).
monitor-demo: $(STAMP)
	$(BIN)/python samples/train_multitask.py docs/runs/multitask.jsonl
	$(BIN)/gradtool report docs/runs/multitask.jsonl --plot docs/figures

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
