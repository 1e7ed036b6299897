#!/usr/bin/env bash
# The GPU check on one H100/H200 (torch + triton preinstalled, no network).
#   here:  bash benchmarks/gpu_prepare.sh          (writes benchmarks/REVISION.json, gitignored)
#   there: OUT=$OUT bash benchmarks/gpu_check.sh   (carry: ["benchmarks/REVISION.json"]; timeout_s >= TOTAL + 30)
# Installs the tree (pip -e, no build isolation, no index; when that fails it runs from the tree without
# bicycle._C), then runs benchmarks/gpu_check.py under timeout: the parts in order of value (env, step,
# kernels, graph_ops, tests, loop, ddp), each capped at a share of BUDGET with floors kept for the parts
# after it, and the one report, OUT/gpu_check.json (+ gpu_check.txt with the speed table, nvidia-smi.txt,
# install.log). Every part runs even when one fails; the exit status is 0 only when every selected part is ok.
#   BUDGET=400         seconds for the parts (after the install); every cap and floor is a share of it
#   TOTAL=440          seconds for install + parts: the parts get min(BUDGET, TOTAL - install - 5)
#   PARTS=step,tests   only these parts, in this order (env, step, kernels, graph_ops, tests, loop, ddp)
#   INSTALL=0          skip the install (a warm machine that has it already)
#   PYTHON=python3     the interpreter; INSTALL_TIMEOUT=60
# As two calls on one warm machine (each call's OUT comes back on its own):
#   1. PARTS=env,step,kernels,graph_ops BUDGET=240 TOTAL=280 OUT=$OUT bash benchmarks/gpu_check.sh
#   2. INSTALL=0 PARTS=tests,loop,ddp BUDGET=240 TOTAL=250 OUT=$OUT bash benchmarks/gpu_check.sh
# Rehearse the budget on any machine (no GPU, no torch; each part sleeps its expected seconds x 0.05):
#   python3 benchmarks/gpu_check.py --rehearse 0.05 --budget 20 --out /tmp/rehearsal
set -u
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu_check_out}
BUDGET=${BUDGET:-400}
TOTAL=${TOTAL:-440}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.." || exit 2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_sh.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export BICYCLE_REQUIRE_TRITON=1 CUBLAS_WORKSPACE_CONFIG=:4096:8  # before anything starts CUDA

install=skipped
if [ "${INSTALL:-1}" != 0 ]; then
  if timeout -k 5 "${INSTALL_TIMEOUT:-60}" "$PY" -m pip install --no-index --no-build-isolation --no-deps \
      --disable-pip-version-check -e . > "$WORK/install.log" 2>&1; then
    install=editable
  else
    install="pip install -e failed (exit $?)"
  fi
  tail -n 200 "$WORK/install.log" > "$OUT/install.log"
fi
if ! (cd / && "$PY" -c 'import bicycle.kernels' > /dev/null 2>&1); then
  # not installed: the driver puts the tree on PYTHONPATH; bicycle.kernels is the top-level kernels/
  [ -e bicycle/kernels ] || ln -s ../kernels bicycle/kernels
  install="$install; running from the tree without bicycle._C"
fi
install_s=$SECONDS
budget=$(( TOTAL - install_s - 5 < BUDGET ? TOTAL - install_s - 5 : BUDGET ))
echo "install: $install (${install_s} s); budget for the parts ${budget} s"

timeout -k 10 $((budget + 15)) "$PY" benchmarks/gpu_check.py --out "$OUT" --budget "$budget" --python "$PY" \
  --install "$install" --install-log "$WORK/install.log" --install-seconds "$install_s" ${PARTS:+--parts "$PARTS"}
status=$?
if [ ! -s "$OUT/gpu_check.json" ]; then
  printf '{"schema": "bicycle-gpu-check/1", "finished": false, "exit_status": %d, "error": "%s"}\n' "$status" \
    "the driver wrote no report (exit $status): see the command output" > "$OUT/gpu_check.json"
fi
exit "$status"
