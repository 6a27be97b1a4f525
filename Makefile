# pat_nbdev: one entry point for setup, tests and the reproduction.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Every notebook (nbdev_test, papermill, make notebooks) draws its figures without a display and hashes strings with a
# fixed seed, so that two runs give the same outputs.
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0

.PHONY: help install prepare test sync-check nbtest pytest reproduce bench notebooks lab readme lock clean clean-runs

help:  ## this list: every target with its comment
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /\1\t/' | awk -F'\t' '{printf "  make %-11s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## create .venv with the pinned dependency set and the package (editable)

$(VENV)/.installed: requirements.lock setup.py settings.ini
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

prepare: install  ## after editing nbs/: export to pat_nbdev/, clean the notebooks, write README.md, run every notebook
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	@$(MAKE) --no-print-directory readme nbtest

test: install sync-check nbtest pytest  ## everything CI checks

sync-check: install  ## notebooks must be clean and agree with pat_nbdev/ and README.md
	@before="$$(git status --porcelain -- nbs pat_nbdev README.md; git diff -- nbs pat_nbdev README.md | sha1sum)"; \
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export && $(BIN)/python scripts/make_readme.py; \
	after="$$(git status --porcelain -- nbs pat_nbdev README.md; git diff -- nbs pat_nbdev README.md | sha1sum)"; \
	if [ "$$before" != "$$after" ]; then \
	  echo "FAIL: nbdev_clean / nbdev_export / make_readme changed files: notebooks unclean or out of sync."; \
	  git status --short -- nbs pat_nbdev README.md; exit 1; fi; \
	echo "sync-check: notebooks clean, pat_nbdev/ and README.md in sync"

nbtest: install  ## run every notebook (cells flagged slow/gpu are skipped)
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing

pytest: install
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

reproduce: install  ## the main job on the embedded synthetic default (CPU)
	$(BIN)/pat-reproduce $(ARGS)

bench: install  ## the loss speed/memory benchmark
	$(BIN)/pat-bench losses

notebooks: install  ## re-execute the library notebooks in place, keeping outputs (figures) for readers; slow cells skipped
	OMP_NUM_THREADS=2 $(BIN)/python scripts/run_notebooks.py nbs/index.ipynb $$(ls nbs/0*.ipynb)
	$(BIN)/nbdev_clean

lab: install  ## open the notebooks in JupyterLab, on the project's environment (kernel "pat_nbdev", registered inside .venv)
	$(BIN)/python -m ipykernel install --sys-prefix --name pat_nbdev --display-name "pat_nbdev (.venv)"
	@if [ "$$(id -u)" = 0 ]; then echo "make lab: running as root (as in most containers): Jupyter is started with --allow-root"; fi
	$(BIN)/jupyter lab nbs $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

readme: install  ## regenerate README.md from nbs/index.ipynb
	$(BIN)/python scripts/make_readme.py

lock:  ## refresh requirements.lock from the current .venv
	{ echo "# Pinned, known-good dependency set (CPU machine, Python 3.11). Regenerate with: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v -E '^(pat.nbdev|-e )'; } > requirements.lock

clean:  ## build leftovers only; runs/ stays (see clean-runs)
	rm -rf _proc _docs .pytest_cache build

clean-runs:  ## delete runs/, every result of make reproduce (the next one rebuilds them all)
	rm -rf runs
