#!/usr/bin/env bash
# The test command: a .venv with xmodal and its dev tools (made if missing, brought up to date when
# pyproject.toml changed), then lint, types, tests.
#
#   scripts/test.sh          everything (CI's run: .ci/run sets XMODAL_TEST_DATABASE_URL for PostgreSQL too)
#   scripts/test.sh --fast   the developer loop (a few minutes): no test marked `slow` (the SIGKILL crash test,
#                            the Ray engine, the browser, schemathesis, real `xmodal serve` processes), SQLite only
#
# Extra arguments go to pytest, e.g. `scripts/test.sh --fast -k manifest -x`. The tests run on
# XMODAL_TEST_WORKERS processes (default 2; pytest-xdist, a whole test file to a worker, so module fixtures
# are built once, the longest files first); 1 runs them in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
# Python may keep the bytecode it compiles (a machine that sets PYTHONDONTWRITEBYTECODE compiles every
# imported module again in each process, and the tests start hundreds); with the --no-compile install
# below, the tests compile what they import once, not every file of torch, ray and transformers up front.
unset PYTHONDONTWRITEBYTECODE
fast=0
if [ "${1:-}" = "--fast" ]; then
  fast=1
  shift
fi
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.xmodal-installed  # the pyproject.toml the venv was installed from
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet --no-compile -e '.[dev,audio,ray]'  # 64 s, not 149 s, on 2 cores
  echo "$want" > "$stamp"
fi
[ "$fast" = 1 ] || bash scripts/install-browser.sh   # Debian chromium for the Playwright browser test
.venv/bin/ruff check xmodal tests scripts benchmarks
.venv/bin/mypy
workers=${XMODAL_TEST_WORKERS:-2}
parallel=()
if [ "$workers" -gt 1 ]; then
  # one torch thread per worker process (and per `xmodal` process a test starts): two workers on two cores
  parallel=(-n "$workers" --dist loadfile --no-loadscope-reorder)  # longest files first: tests/conftest.py
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
if [ "$fast" = 1 ]; then
  exec env -u XMODAL_TEST_DATABASE_URL .venv/bin/pytest "${parallel[@]}" -m "not slow and not postgres" "$@"
fi
exec .venv/bin/pytest "${parallel[@]}" "$@"
