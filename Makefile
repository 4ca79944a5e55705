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

# Three workers on any machine: most tests wait on real clocks (periods, players,
# browsers), not on the CPU, so they overlap well even on two cores.
test: films docs
	$(PY) -m pytest -n 3

# The documentation: Sphinx (warnings are errors) and doxygen (any warning fails).
DOXY_WARNINGS := docs/_build/doxygen/warnings.log

docs: venv
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
	@mkdir -p docs/_build/doxygen
	doxygen Doxyfile
	@if [ -s $(DOXY_WARNINGS) ]; then cat $(DOXY_WARNINGS); \
	    echo "doxygen: warnings (see $(DOXY_WARNINGS))"; exit 1; fi

clean:
	rm -rf .venv docs/_build test-artifacts bench-results filme/*.mkv
