#!/usr/bin/env bash
# One-shot GPU check: build refusion._C with CUDA for this GPU, run the CUDA tests, then the CUDA
# benchmarks, and leave logs, the pytest-benchmark JSON and a Markdown report in $OUT.
#
#   OUT=/some/folder bash bench/gpu_check.sh        # default OUT: ./gpu-check
#
# Meant for a machine lent for a few minutes (e.g. this workplace's `device` tool: one H200,
# PyTorch with CUDA, nvcc, cmake, ninja, pybind11, pytest, pytest-benchmark, onnx, a CPU-only
# onnxruntime, opencv, scikit-image, safetensors, pyyaml, tqdm already installed, no network).
# The package is used from this source tree (nothing is pip-installed). About 5-8 minutes on an
# H200; REFUSION_BENCH_SIZES (default 480x640,1920x1080) trims the backend benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nvcc --version | tail -1
} > "$OUT/machine.txt" 2>&1
if ! arch=$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}{c[1]}')" 2>/dev/null); then
  echo "no CUDA device visible to torch" | tee -a "$OUT/machine.txt"
  exit 1
fi

echo "== build refusion._C for sm_$arch"
if ! { cmake -S . -B build/gpu -G Ninja -DREFUSION_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
         -DCMAKE_BUILD_TYPE=Release -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" \
       && cmake --build build/gpu; } > "$OUT/build.log" 2>&1; then
  tail -30 "$OUT/build.log"
  exit 1
fi
cp build/gpu/_C*.so refusion/
$PY -c "from refusion import _native; print(_native.build_info())" | tee -a "$OUT/machine.txt"

echo "== CUDA parity tests"
$PY -m pytest -q -rs tests/test_native.py tests/test_ops_sobel.py tests/test_ops_gate.py tests/test_ops_isa.py \
  tests/test_fp16.py tests/test_engine.py tests/test_export_deploy.py \
  tests/test_engine_precision.py::test_cli_fp16_on_cuda_gives_the_fp32_images -p no:cacheprovider \
  > "$OUT/tests.log" 2>&1
tests_rc=$?
tail -3 "$OUT/tests.log"

echo "== CUDA benchmarks"
REFUSION_BENCH_SIZES=${REFUSION_BENCH_SIZES:-480x640,1920x1080} \
  $PY -m pytest -q bench/bench_ops.py bench/bench_backends.py --benchmark-only -k "cuda or latency" \
  --benchmark-json="$OUT/bench.json" --benchmark-columns=min,median,mean,rounds \
  -p no:cacheprovider > "$OUT/bench.log" 2>&1
grep -E "^test_|^Name|^-" "$OUT/bench.log" | cut -c1-110
$PY bench/report.py --json "$OUT/bench.json" --out "$OUT/benchmarks.md" > /dev/null 2>&1 || true
exit $tests_rc
