#!/usr/bin/env bash
# The ONE GPU check (at most 6 minutes on one H100, torch + triton preinstalled, no network):
#   1. install the tree (pip --no-build-isolation --no-deps -e .; without scikit-build-core/pybind11
#      it falls back to running from the tree without bicycle._C, as gpu_check_ops.sh does)
#   2. GPU tests: fused ops (incl. capture in CUDA graphs) and the graph-replayed step, properties (i)-(v)
#   3. step bench: paper configuration, batch 2/8/32, eager reference vs CUDA-graph fast mode (fp32, bf16)
#   4. kernel bench up to 2^26 elements (ref vs triton, fp32 + bf16) and the fused ops at the paper's
#      shapes under graph replay
# Everything lands in $OUT as JSON (gpu_check.json sums it up) next to logs. Each part has its own
# timeout, clipped to what is left of the overall budget, so the script ends in time.
#   OUT=/tmp/out bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-$PWD/gpu_check_out}
PY=${PYTHON:-python}
BUDGET=${BICYCLE_GPU_CHECK_BUDGET:-345}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
START=$(date +%s)
status=0
# seconds for a part: min(cap, what is left minus a reserve for the parts after it)
tlimit() { local cap=$1 reserve=$2 left; left=$((BUDGET - ($(date +%s) - START) - reserve)); [ "$left" -lt 5 ] && left=5; [ "$cap" -lt "$left" ] && echo "$cap" || echo "$left"; }
log() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$OUT/summary.txt"; }

{ nvidia-smi || true; } > "$OUT/nvidia-smi.txt" 2>&1
$PY - > "$OUT/versions.txt" 2>&1 <<'PYEOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
try:
    import triton; print("triton", triton.__version__)
except ImportError as e:
    print("triton missing:", e)
PYEOF
cat "$OUT/versions.txt" >> "$OUT/summary.txt"

# 1) install
if [ -n "${BICYCLE_WHEELS:-}" ]; then
  $PY -m pip install --no-index --find-links "$BICYCLE_WHEELS" scikit-build-core pybind11 pytest cmake ninja \
    > "$OUT/wheels.log" 2>&1 || log "wheel install incomplete, see wheels.log"
fi
if timeout "$(tlimit 100 240)" $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/install.log" 2>&1; then
  log "installed (editable, with bicycle._C if it built)"
else
  log "editable install failed (see install.log): running from the tree without bicycle._C"
  mkdir -p "$OUT/shim"
  ln -sfn "$PWD/bicycle" "$OUT/shim/bicycle"
  export PYTHONPATH="$OUT/shim:${PYTHONPATH:-}"
  [ -e bicycle/kernels ] || ln -sfn "$PWD/kernels" bicycle/kernels
fi
export BICYCLE_REQUIRE_TRITON=1

# 2) GPU tests: ops (correctness, capture) + the graphed training step (i)-(v) and the KL warm-up tensor (vi)
timeout "$(tlimit 110 170)" $PY -m pytest -q -p no:cacheprovider tests/test_triton_ops.py tests/test_ops_dispatch.py \
  tests/test_graph.py --junitxml="$OUT/gpu_tests.xml" > "$OUT/gpu_tests.txt" 2>&1 || status=1
log "tests: $(tail -n 1 "$OUT/gpu_tests.txt")"

# 3) step bench: the paper configuration, eager reference vs fast, batch 2, 8, 32
timeout "$(tlimit 130 45)" $PY -m bicycle.cli bench --step --device cuda --batch-size 2 --batch-size 8 --batch-size 32 \
  --json "$OUT/step_cuda.json" > "$OUT/step_bench.txt" 2>&1 || status=1
cat "$OUT/step_bench.txt" >> "$OUT/summary.txt"

# 4) kernel bench up to 2^26 elements, and the fused ops at the paper's shapes under graph replay
timeout "$(tlimit 40 8)" $PY - > "$OUT/kernel_bench.txt" 2>&1 <<PYEOF || status=1
from bicycle.bench import format_table, run_kernel_bench
print(format_table(run_kernel_bench("cuda", [1 << 20, 1 << 24, 1 << 26], "$OUT/kernels_cuda.json", True)))
PYEOF
tail -n 32 "$OUT/kernel_bench.txt" >> "$OUT/summary.txt"
timeout "$(tlimit 25 3)" $PY -m bicycle.cli bench --graph-ops --device cuda --json "$OUT/graph_ops_cuda.json" \
  > "$OUT/graph_ops.txt" 2>&1 || status=1
cat "$OUT/graph_ops.txt" >> "$OUT/summary.txt"

# one JSON with everything (tests parsed from the junit xml)
$PY - "$OUT" "$status" "$(($(date +%s) - START))" <<'PYEOF' || true
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
out, status, seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
res = {"status": status, "seconds": seconds, "versions": (out / "versions.txt").read_text().strip()}
try:
    cases = []
    for tc in ET.parse(out / "gpu_tests.xml").getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if tc.find(tag) is not None:
                outcome = tag
        cases.append({"test": f"{tc.get('classname')}::{tc.get('name')}", "outcome": outcome, "seconds": float(tc.get("time", 0))})
    res["tests"] = cases
except (OSError, ET.ParseError) as exc:
    res["tests"] = f"unavailable: {exc}"
for name in ("step_cuda", "kernels_cuda", "graph_ops_cuda"):
    p = out / f"{name}.json"
    res[name] = json.loads(p.read_text()) if p.exists() else None
(out / "gpu_check.json").write_text(json.dumps(res, indent=1) + "\n")
PYEOF
log "done, status $status; results in $OUT/gpu_check.json"
exit $status
