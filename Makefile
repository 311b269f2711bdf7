# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
DATA    ?= $(abspath ../shared/data)
export LLM_CASCADE_DATA ?= $(DATA)
# Nothing may be fetched from a hub at run time; tests and the demo run offline.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export LITELLM_LOCAL_MODEL_COST_MAP=True

.PHONY: demo test lint typecheck bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/mmlu_cascade.py

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check llm_cascade tests examples benchmarks
	$(VENV)/bin/ruff format --check llm_cascade tests examples benchmarks
	$(VENV)/bin/mypy llm_cascade

bench: $(VENV)/.installed
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
