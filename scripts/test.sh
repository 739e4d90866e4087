#!/usr/bin/env bash
# Install (into .venv, once) and run the whole test suite. The README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
exec .venv/bin/python -m pytest -q tests "$@"
