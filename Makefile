# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   the whole journey on the embedded PostgreSQL
#   make test   install what the tests need and run them
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test install test-tools bench clean
.PRECIOUS: $(VENV)/.installed-%

# One virtualenv; each target installs the extras of pyproject.toml it needs: `demo` (embedded
# PostgreSQL, the catalog service's migrations, the monolith's forms) or `test` (every extra).
$(VENV)/.installed-%: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$*]'
	touch $@

install: $(VENV)/.installed-test

demo: $(VENV)/.installed-demo
	$(BIN)/strangler demo

# The programs the suite runs, as program:Debian-package: headless Chromium renders the shadow
# report; nginx and wrk drive the bench harness tests. Installed with apt-get when we may (root);
# otherwise the tests that need one fail saying how to install it.
TEST_TOOLS := chromium:chromium nginx:nginx wrk:wrk

test-tools:
	@missing=""; for pair in $(TEST_TOOLS); do tool=$${pair%%:*}; \
	  command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $${pair#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "note: the tests need$$missing; install with: sudo apt-get update && sudo apt-get install -y$$missing" >&2; \
	  exit 0; fi; \
	echo "installing$$missing (Debian packages) for the tests"; \
	apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install --reinstall -y -qq$$missing >/dev/null

# `make test PYTEST_ARGS='-x tests/bench'` runs a part of the suite the same way; TEST_WORKERS=0
# runs it in one process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-test test-tools
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)
	@test ! -f test-artifacts/shadow_report.png || echo "screenshot of the rendered shadow report: test-artifacts/shadow_report.png"

bench: $(VENV)/.installed-test
	$(BIN)/python bench/proxy.py
	$(BIN)/python bench/cdc.py

clean:
	rm -rf $(VENV) .strangler build *.egg-info
