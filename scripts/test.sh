#!/usr/bin/env bash
# The test command (README, .ci/run): set up if needed, then the default tests in three CPU lanes and the Triton
# interpreter lane.  Extra arguments go to pytest in every CPU lane, e.g. `bash scripts/test.sh -m slow`.
# FASTPURIFY_LANES=native,avx2,lowest picks lanes (default: all three).  What each variable controls in this torch:
#   MKL_ENABLE_INSTRUCTIONS  MKL's BLAS code path (matmul, einsum, bmm; the fp32/fp64 products that round
#                            differently on AVX2 and AVX-512 machines)
#   ATEN_CPU_CAPABILITY      ATen's vectorised element-wise and reduction kernels (torch.backends.cpu.get_cpu_capability)
#   ONEDNN_MAX_CPU_ISA       oneDNN's kernels (convolutions on larger shapes)
#   FASTPURIFY_CPU_ISA       our C++ noise and step loops (baseline | avx2 | avx512); the others cannot reach them
# Each lane prints the ISA every layer actually ran (scripts/lane_isa.py) before its tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate

lane_env() {
  case "$1" in
    native) echo "OMP_NUM_THREADS=2" ;;
    avx2)   echo "MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 FASTPURIFY_CPU_ISA=avx2 OMP_NUM_THREADS=2" ;;
    lowest) echo "MKL_ENABLE_INSTRUCTIONS=SSE4_2 ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 FASTPURIFY_CPU_ISA=baseline OMP_NUM_THREADS=1" ;;
    *) echo "unknown lane $1 (expected native, avx2, lowest)" >&2; return 2 ;;
  esac
}

failed=()
IFS=, read -ra lanes <<< "${FASTPURIFY_LANES:-native,avx2,lowest}"
for lane in "${lanes[@]}"; do
  vars=$(lane_env "$lane")
  echo "=== lane $lane: $vars"
  # shellcheck disable=SC2086  (word splitting of the variable list is intended)
  env $vars python scripts/lane_isa.py
  env $vars python -m pytest -p no:cacheprovider "$@" || failed+=("$lane")
done
# Triton kernels in Triton's interpreter on the CPU (the variable must be set before Python starts).
echo "=== lane triton-interpreter"
TRITON_INTERPRET=1 python -m pytest -p no:cacheprovider -m interpret tests/test_triton_interpret.py || failed+=(triton)
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED lanes: ${failed[*]}"
  exit 1
fi
echo "all lanes passed: ${lanes[*]} triton-interpreter"
