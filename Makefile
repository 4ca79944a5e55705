# relaytv: `make demo` runs the main job, `make test` the test suite.
# Both install what they need (Debian packages, .venv, sample films) first,
# and only what is missing.

PY      := .venv/bin/python
VENV_OK := .venv/installed.stamp

.PHONY: all demo test docs bench system venv films clean

all: test

system:
	@bash scripts/ensure-system.sh

$(VENV_OK): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

venv: system $(VENV_OK)

films: venv
	@ls filme/*_00000.mkv >/dev/null 2>&1 || $(PY) separa.py --sample --out filme

demo: films
	$(PY) -m bench.demo

test: films
	$(PY) -m pytest

clean:
	rm -rf .venv docs/_build test-artifacts bench-results filme/*.mkv
