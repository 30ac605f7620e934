# ganaug developer entry points. `make demo` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The exact torch build this project is tested with (local wheels on the CI machines; a CUDA build).
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo demo-train test bench lint mutation clean

venv: $(STAMP)

# The development install runs the sampler on onnxruntime's CPU build (the [cpu] extra). onnxruntime
# and onnxruntime-gpu write one onnxruntime/ directory, so a venv must never hold both; a .venv made
# before the [cpu]/[gpu] extras has onnxruntime-gpu (then a core dependency). Removing both and
# installing what [cpu] names leaves exactly one runtime, with all of its files.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip uninstall --quiet --yes onnxruntime-gpu onnxruntime
	$(BIN)/pip install --quiet -e '.[train,cpu,dev]'
	touch $(STAMP)

demo: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/demo.sh

demo-train: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/demo_train.sh

# One pytest worker per core, each taking whole test files (module fixtures are built once): the
# suite is mostly one-core work, subprocess start-up and torch imports, so two cores cut it by a third.
test: venv
	$(BIN)/python -m pytest -q -n auto --dist loadfile

bench: venv
	$(BIN)/ganaug bench --out runs/bench.json

lint: venv
	$(BIN)/ruff check ganaug tests
	$(BIN)/shellcheck scripts/*.sh launch/*.sh export/*.sh
	$(BIN)/shellcheck -s bash launch/*.sbatch
	$(BIN)/hadolint docker/*.Dockerfile

# Mutation testing of the GAN maths (docs/reliability.md, "Mutation testing"); minutes, not part of `test`.
mutation: venv
	$(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut results
	$(BIN)/python scripts/hand_mutants.py

clean:
	rm -rf runs .pytest_cache mutants
