#!/usr/bin/env bash
# Create .venv-peers (git-ignored) with llm-compressor beside the same CPU torch as .venv.
# torch and llmcompressor go in ONE pip command: separately, pip resolves a CUDA torch build.
# Never install these into .venv: llmcompressor pins transformers/accelerate versions of its own.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
stamp=.venv-peers/.iobs-peers-$(sha1sum benchmarks/peers/setup.sh | cut -c1-12)
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv-peers/bin/python ] || "$PY" -m venv .venv-peers
.venv-peers/bin/python -m pip --disable-pip-version-check -q install torch==2.13.0 llmcompressor==0.14.0.1
rm -f .venv-peers/.iobs-peers-*
touch "$stamp"
.venv-peers/bin/python -c "import torch, llmcompressor, transformers; print('peers venv:', 'torch', torch.__version__, 'llmcompressor', llmcompressor.__version__, 'transformers', transformers.__version__)"
