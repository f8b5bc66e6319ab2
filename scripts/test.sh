#!/usr/bin/env bash
# The test command: a .venv with xmodal and its dev tools (made if missing), then lint, types, tests.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k e2e -x`.
# Set XMODAL_TEST_DATABASE_URL (as .ci/run does) to run the catalog tests against PostgreSQL too.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev,audio,ray]'
bash scripts/install-browser.sh   # Debian chromium for the Playwright browser test
.venv/bin/ruff check xmodal tests scripts benchmarks
.venv/bin/mypy
exec .venv/bin/pytest "$@"
