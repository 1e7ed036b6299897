#!/usr/bin/env bash
# GPU check for the fused ops: install the tree, run the op tests on CUDA (correctness + CUDA-graph
# capture) and the kernel bench, writing everything under $OUT. For a machine with torch + triton
# preinstalled and no network: build tools (scikit-build-core, pybind11, cmake, ninja) and pytest come
# from the environment or from wheels in $BICYCLE_WHEELS (pip --no-index). Without them the C++
# extension is skipped and the Triton tests still run.
#   OUT=/tmp/out bash benchmarks/gpu_check_ops.sh
set -u
OUT=${OUT:-$PWD/gpu_check_out}
PY=${PYTHON:-python}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
status=0

{ nvidia-smi || true; } > "$OUT/nvidia-smi.txt" 2>&1
$PY - > "$OUT/versions.txt" 2>&1 <<'PYEOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
try:
    import triton; print("triton", triton.__version__)
except ImportError as e:
    print("triton missing:", e)
PYEOF

if [ -n "${BICYCLE_WHEELS:-}" ]; then
  $PY -m pip install --no-index --find-links "$BICYCLE_WHEELS" scikit-build-core pybind11 pytest cmake ninja \
    > "$OUT/wheels.log" 2>&1 || echo "wheel install incomplete, see wheels.log" >> "$OUT/summary.txt"
fi
if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/install.log" 2>&1; then
  echo "editable install failed (see install.log); running from the tree without bicycle._C" >> "$OUT/summary.txt"
  # Without the build backend, expose the tree as `bicycle` + `bicycle.kernels` through a .pth-free shim.
  mkdir -p "$OUT/shim"
  ln -sfn "$PWD/bicycle" "$OUT/shim/bicycle"
  export PYTHONPATH="$OUT/shim:${PYTHONPATH:-}"
  [ -e bicycle/kernels ] || ln -sfn "$PWD/kernels" bicycle/kernels
fi

export BICYCLE_REQUIRE_TRITON=1
# 1) correctness on CUDA (DEVICE is cuda here) including the CUDA-graph tests, plus C++ and dispatcher tests
timeout 420 $PY -m pytest -q -p no:cacheprovider tests/test_triton_ops.py tests/test_ops_dispatch.py \
  tests/test_cpp_ops.py --junitxml="$OUT/ops_tests.xml" > "$OUT/ops_tests.txt" 2>&1 || status=1
tail -n 5 "$OUT/ops_tests.txt" >> "$OUT/summary.txt"

# 2) kernel bench: ref vs triton, fp32 and bf16, with the device copy bandwidth as yardstick
timeout 240 $PY - > "$OUT/bench.txt" 2>&1 <<PYEOF || status=1
from bicycle.bench import format_table, run_kernel_bench
from bicycle.envinfo import format_op_impls, op_impls
print(format_op_impls(op_impls()))
print(format_table(run_kernel_bench("cuda", [1 << 16, 1 << 20, 1 << 22, 1 << 24, 1 << 26], "$OUT/kernels_cuda.json", False)))
PYEOF
tail -n 40 "$OUT/bench.txt" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
exit $status
