# Two set-up commands on a fresh machine (see README.md):
#   make demo   virtual environment + install + the main job
#   make test   virtual environment with the dev extras, the anchors and the export extra + the whole test suite
PYTHON ?= python3
DEMO_VENV ?= .venv
TEST_VENV ?= .venv-test
ATTNLAB_DATA ?= ../shared/data
export ATTNLAB_DATA
PYTEST_ARGS ?=
# test workers (pytest-xdist), each given whole test files and one torch thread
PYTEST_JOBS ?= 2

.PHONY: demo test install install-test install-browser bench lint clean

$(DEMO_VENV)/.installed: pyproject.toml constraints/demo.txt constraints/common.txt
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEMO_VENV)/bin/python -m pip install -q -c constraints/demo.txt -e .
	touch $@

$(TEST_VENV)/.installed: pyproject.toml constraints/test.txt constraints/common.txt
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(TEST_VENV)/bin/python -m pip install -q -c constraints/test.txt -e '.[dev,anchors,export]'
	touch $@

install: $(DEMO_VENV)/.installed
install-test: $(TEST_VENV)/.installed

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/attnlab demo

# Headless Chromium for the explorer page's browser tests (Debian's package; never fails the
# build: without it those tests skip with the reason).
CHROMIUM ?= /usr/bin/chromium
ATTNLAB_CHROMIUM ?= $(CHROMIUM)
export ATTNLAB_CHROMIUM
install-browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) >/dev/null 2>&1 \
			|| echo "install-browser: apt-get could not install chromium; the browser tests will skip"; \
	else echo "install-browser: no $(CHROMIUM) and no root apt-get; the browser tests will skip"; fi

test: $(TEST_VENV)/.installed install-browser
	$(TEST_VENV)/bin/python -m pytest -q -n $(PYTEST_JOBS) --dist loadfile --durations=25 $(PYTEST_ARGS)

lint: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/ruff check src tests bench

bench: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python bench/attention.py

clean:
	rm -rf $(DEMO_VENV) $(TEST_VENV) runs
