# The README's commands. Each one sets itself up: `.venv` is created on first use and filled
# from the lock (requirements/lock.txt: exact versions, hash-checked; see DESIGN.md "The lock").
#
# The Python versions the suite passes on (pyproject.toml's requires-python says the same;
# tests/test_packaging.py checks both). PYTHON is the first of them found, or set it yourself.
SUPPORTED_PYTHONS := 3.11 3.12 3.13
PYTHON ?= $(shell for p in $(foreach v,$(SUPPORTED_PYTHONS),python$(v)) python3; do \
	$$p -c 'import sys; sys.exit(f"{sys.version_info[0]}.{sys.version_info[1]}" not in "$(SUPPORTED_PYTHONS)".split())' \
	2>/dev/null && { command -v $$p; break; }; done)
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements/lock.txt
STAMP := $(VENV)/.installed

.PHONY: setup course test test-unit test-notebooks lab bench lock check-latest print-supported-pythons clean

print-supported-pythons:
	@echo $(SUPPORTED_PYTHONS)

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK) requirements/pip.txt tools/lock.py
	@test -n "$(PYTHON)" || { echo "need Python $(SUPPORTED_PYTHONS) (none found on PATH): install one, or run e.g. make PYTHON=/path/to/python3.12 $(MAKECMDGOALS)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements/pip.txt
	# torch by its locked version, not its hash: this machine's CPU wheel on disk, PyPI's build
	# elsewhere, or the CUDA build a GPU machine already has (README, GPU); then everything else
	# exactly as locked, hash-checked, less the CUDA libraries a CPU torch does not ask for
	$(PY) -m pip install -q "$$(grep -m1 -o '^torch==[^ ;\\]*' $(LOCK))"
	$(PY) tools/lock.py for-this-torch $(LOCK) > $(VENV)/lock-selected.txt
	$(PY) -m pip install -q --require-hashes -r $(VENV)/lock-selected.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

course: $(STAMP)
	$(PY) -m mamba_nb course

test: test-unit test-notebooks

# Everything under tests/ (the browser tests skip, with their reason, where Chromium is missing).
test-unit: $(STAMP)
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

test-notebooks: $(STAMP)
	MAMBA_NB_SMOKE=1 $(PY) -m pytest -q --nbmake notebooks

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# Re-resolve the lock from pyproject.toml's ranges and requirements/lock.in, newest versions
# first (README, "Upgrading the locked packages"): then `make test`, then commit the lock.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile --quiet --universal --generate-hashes --python-version 3.11 \
		--index-url https://pypi.org/simple --custom-compile-command "make lock" \
		--extra dev --extra scale -o $(LOCK) pyproject.toml requirements/lock.in
	$(VENV)/bin/uv pip compile --quiet --universal --generate-hashes --python-version 3.11 \
		--index-url https://pypi.org/simple --custom-compile-command "make lock" \
		-o requirements/pip.txt requirements/pip.in

# The newest versions the ranges allow, in a scratch environment, through the unit suite: a
# table of locked against newest (ARGS=--beyond: without upper bounds). Not part of CI (a
# release upstream must not fail it).
check-latest: $(STAMP)
	$(PY) tools/check_latest.py $(ARGS)

clean:
	rm -rf $(VENV) $(foreach v,$(SUPPORTED_PYTHONS),.venv-$(v)) .venv-latest data/stdlib runs
