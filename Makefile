# Two commands on a fresh machine:
#   make demo   - create .venv, install, run the embedded default study
#   make test   - create .venv, install, run the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
# Offline by construction: no weights or data from a hub at run time. These must
# be set before Python starts; setting them inside the process is ignored.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: venv demo test test-fast lint format dryrun-imagenet bench bench-gpu clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml
	@echo "Report: results/digits/report/index.html"

# The whole suite must run tests: pytest's exit 5 (nothing collected) fails it.
# Only a filtered run (-m, -k) may select nothing, so only test-fast accepts 5.
PYTEST = $(BIN)/python -m pytest -ra --durations=15
test: $(STAMP)
	$(PYTEST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not slurm" $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: the filter selected no tests"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

format: $(STAMP)
	$(BIN)/snakefmt Snakefile workflow/rules

dryrun-imagenet: $(STAMP)
	$(BIN)/snakemake -n --quiet rules --configfile config/imagenet.yaml

bench: $(STAMP)
	$(BIN)/python bench/mix.py
	$(BIN)/python bench/loader.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/optimizer.py

# Calibrates the cost plan: generation, training, evaluation and feature
# extraction timed on this machine, each result a row in ledger/<device>.parquet
# (README, "Calibrating on a GPU"). On a GPU node the paper sizes within 10
# minutes; where torch sees no GPU, the small CPU form (about a minute).
BENCH_ARGS ?= --device auto
bench-gpu: $(STAMP)
	$(BIN)/python bench/all.py $(BENCH_ARGS)

clean:
	rm -rf results logs benchmarks .snakemake
