# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   the whole journey on the embedded PostgreSQL
#   make test   install what the tests need and run them
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install test-tools bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/strangler demo

# Headless Chromium renders the shadow report in its test; installed from Debian's packages
# when we may (root with apt-get), otherwise that one test says how to get it.
test-tools:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (Debian package) for the report rendering test"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not found; install it to run the report rendering test"; fi; }

test: $(STAMP) test-tools
	$(BIN)/python -m pytest
	@test ! -f test-artifacts/shadow_report.png || echo "screenshot of the rendered shadow report: test-artifacts/shadow_report.png"

bench: $(STAMP)
	$(BIN)/python bench/proxy.py
	$(BIN)/python bench/cdc.py

clean:
	rm -rf $(VENV) .strangler build *.egg-info
