# lorabench — the two commands a user needs are `make benchmark` and `make test`; each sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lorabench-installed
SUITE ?= harness/suites/default.yaml
RESULTS ?= results/runs/default
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup lint test test-fast benchmark report regress parity memory memory-gpu minicpmv minicpmv-outcome microbench model data clean versions

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install the pinned stack (no-op when already done)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'
	$(PY) -c "import torch, torchvision, transformers, peft, swift, deepspeed, jiwer; print('lorabench stack ok: torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
	touch $(STAMP)

lint: setup  ## ruff, mypy on the spec and records, and the import layers (docs/architecture.md)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

# Tests run in one pytest worker per core (pytest-xdist), each test taken by whichever worker is free
# (worksteal: the long integration tests do not queue behind each other on one worker).
test: setup lint  ## lint, then the whole test suite (unit, integration on the tiny model, CLI)
	$(PY) -m pytest -q -p no:cacheprovider --timeout=1200 -n auto --dist worksteal --durations=25

test-fast: setup lint  ## lint, then unit and CLI tests only (no framework training)
	$(PY) -m pytest -q -p no:cacheprovider -m "not integration and not slow" -n auto --dist worksteal

data: setup  ## build the default synthetic dataset
	$(VENV)/bin/lorabench data build synthdocs

model: setup  ## build the embedded tiny model (instant when the committed or cached copy matches)
	$(VENV)/bin/lorabench model build

benchmark: setup model  ## run the default suite on the tiny model, the parity check, and write the report
	$(VENV)/bin/lorabench run $(SUITE) --resume
	$(VENV)/bin/lorabench parity harness/suites/parity.yaml --out $(RESULTS)/parity || echo "parity: NOT ALIGNED (see above)"
	$(VENV)/bin/lorabench report $(RESULTS)

report: setup  ## write the report for RESULTS
	$(VENV)/bin/lorabench report $(RESULTS)

regress: setup  ## compare RESULTS against the committed baseline
	$(VENV)/bin/lorabench regress --baseline results/baselines/default.json --current $(RESULTS)

parity: setup model  ## prove peft, swift and torch aligned on the example spec, then the ablation table
	$(VENV)/bin/lorabench parity harness/suites/parity.yaml --out $(RESULTS)/parity
	$(VENV)/bin/lorabench parity harness/suites/parity.yaml --ablate --out $(RESULTS)/parity

minicpmv: setup  ## MiniCPM-V: swift defaults vs the official recipe vs the HF recipe (suite, profile ablation, report)
	$(VENV)/bin/lorabench model build --family minicpmv
	$(VENV)/bin/lorabench run harness/suites/minicpmv.yaml --resume
	$(VENV)/bin/lorabench parity harness/suites/parity-minicpmv.yaml --steps 8 --ablate --profiles swift-default,minicpmv-official --out results/runs/minicpmv/parity
	$(VENV)/bin/lorabench report results/runs/minicpmv

# The outcome ablations at the suite's budget (swift-default's 125 steps of 16 = the cells' 2,000 samples):
# 30 fine-tunes a pair, hours on a CPU. Every finished arm run is recorded in results/ablation-arms/minicpmv
# (committed), and --resume skips the arms recorded there on the same builds, releases and machine kind,
# so the target can run in parts, in any clone.
OUTCOME_MINICPMV := --outcome --seeds 0,1 --steps 125 --set train.max_train_samples=1000 \
	--set eval.max_samples=60 --set eval.max_new_tokens=160 --set eval.batch_size=20 \
	--resume --records results/ablation-arms/minicpmv --out results/runs/minicpmv/parity

minicpmv-outcome: setup  ## MiniCPM-V: why swift-default ends differently from the official recipe and from peft-default (resumable; then the report)
	$(VENV)/bin/lorabench model build --family minicpmv
	$(VENV)/bin/lorabench parity harness/suites/parity-minicpmv.yaml --ablate --profiles swift-default,minicpmv-official $(OUTCOME_MINICPMV)
	$(VENV)/bin/lorabench parity harness/suites/parity-minicpmv.yaml --ablate $(OUTCOME_MINICPMV) \
		--profiles swift-default,harness/suites/recipes/swift-lr-1e-6-no-prefix.yaml
	$(VENV)/bin/lorabench parity harness/suites/parity-minicpmv.yaml --ablate --profiles swift-default,peft-default $(OUTCOME_MINICPMV)
	$(VENV)/bin/lorabench report results/runs/minicpmv

memory: setup model  ## run the memory-levers suite (DeepSpeed ZeRO, offload, 2 processes)
	$(VENV)/bin/lorabench run harness/suites/memory.yaml --resume
	$(VENV)/bin/lorabench report results/runs/memory

versions: setup model  ## the version matrix: short cells under the pinned set and each release set of harness/envs/ (created once with uv), and its report
	$(VENV)/bin/lorabench run harness/suites/versions.yaml --resume || echo "versions: a cell failed (a release that cannot run it: the report lists why)"
	$(VENV)/bin/lorabench report results/runs/versions

# Each file's last passing result is its reference; a median slowdown beyond MICROBENCH_FAIL fails
# the target and keeps the old reference. Results (pytest-benchmark JSON) go to MICROBENCH_DIR.
MICROBENCH_FILES ?= tests/microbench/test_peft_step.py tests/microbench/test_swift_encode.py
MICROBENCH_DIR ?= .benchmarks/lorabench
MICROBENCH_FAIL ?= median:25%

memory-gpu: setup  ## memory suite on a GPU + measured ZeRO-2/3/offload rows for plan --validate-published; DRY_RUN=1, ZERO_ONLY=1, MODEL=DIR
	$(if $(DRY_RUN)$(MODEL),,$(MAKE) model)
	$(PY) -m harness.memory_gpu $(if $(DRY_RUN),--dry-run) $(if $(ZERO_ONLY),--zero-only) $(if $(MODEL),--model $(MODEL))

microbench: setup model  ## micro-benchmarks (encode, train step); fails on a median slowdown > 25% vs the last pass
	@mkdir -p $(MICROBENCH_DIR)
	@for f in $(MICROBENCH_FILES); do \
	  name=$$(basename $$f .py); out=$(MICROBENCH_DIR)/$$name.json; ref=$(MICROBENCH_DIR)/$$name.reference.json; \
	  if [ -f $$ref ]; then compare="--benchmark-compare=$$ref --benchmark-compare-fail=$(MICROBENCH_FAIL)"; \
	  else compare=""; echo "microbench: no reference for $$name yet: this run becomes it"; fi; \
	  $(PY) -m pytest -q -p no:cacheprovider $$f --benchmark-json=$$out $$compare || exit 1; \
	  cp $$out $$ref; echo "microbench: $$name: $$out (reference: $$ref)"; \
	done

clean:  ## remove generated data, local runs and caches (keeps .venv)
	rm -rf datasets/*/build results/runs .cache
