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

.PHONY: demo test postgres lint typecheck bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/mmlu_cascade.py

test: $(VENV)/.installed postgres
	$(PY) -m pytest

# The ledger's PostgreSQL tests start their own throwaway server from Debian's postgresql package; install it when
# absent (needs root). If that fails the tests skip with the reason, so this target never fails the build.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "PostgreSQL could not be installed: its tests will be skipped"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check llm_cascade tests examples benchmarks
	$(VENV)/bin/ruff format --check llm_cascade tests examples benchmarks
	$(VENV)/bin/mypy llm_cascade

bench: $(VENV)/.installed
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/import_time.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
