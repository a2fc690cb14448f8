# Two set-up commands on a fresh machine (see README.md):
#   make demo   virtual environment + install + the main job
#   make test   virtual environment with the dev extras and the anchors + the whole test suite
PYTHON ?= python3
DEMO_VENV ?= .venv
TEST_VENV ?= .venv-test
ATTNLAB_DATA ?= ../shared/data
export ATTNLAB_DATA
PYTEST_ARGS ?=

.PHONY: demo test install install-test bench lint clean

$(DEMO_VENV)/.installed: pyproject.toml constraints/demo.txt constraints/common.txt
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEMO_VENV)/bin/python -m pip install -q -c constraints/demo.txt -e .
	touch $@

$(TEST_VENV)/.installed: pyproject.toml constraints/test.txt constraints/common.txt
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(TEST_VENV)/bin/python -m pip install -q -c constraints/test.txt -e '.[dev,anchors]'
	touch $@

install: $(DEMO_VENV)/.installed
install-test: $(TEST_VENV)/.installed

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/attnlab demo

test: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/ruff check src tests bench

bench: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python bench/attention.py

clean:
	rm -rf $(DEMO_VENV) $(TEST_VENV) runs
