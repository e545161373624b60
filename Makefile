# The README's commands. Each one sets itself up: `.venv` is created and
# filled on first use (torch pinned to the CPU wheel; on a GPU machine install
# the CUDA build first, see README "GPU").
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup course test test-fast lab bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,scale]'
	touch $(STAMP)

course: $(STAMP)
	$(PY) -m mamba_nb course

test: $(STAMP)
	$(PY) -m pytest -q tests
	MAMBA_NB_SMOKE=1 $(PY) -m pytest -q --nbmake notebooks

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) data/stdlib runs
