#!/usr/bin/env bash
# GPU check, one command, under 8 minutes. Writes $OUT/gpu_check.md (default build/gpu-check).
#
# - TensorRT present (NVIDIA's TensorRT container, or a Triton image with the tensorrt wheel):
#   small preset -> fp16 ONNX -> engine -> parity of the engine against the reference (fp16
#   tolerance 5e-2, identical rankings) -> throughput sweep of the engine; when a tritonserver with
#   the TensorRT backend is also present (TRITONSERVER_BIN), the GPU repository is served and the
#   served ensemble gets the same parity and sweep.
# - Always first (loadtests/gpu_reference.py): the PyTorch reference in bf16 on the GPU at the real
#   (full) dimensions with random weights: pairs/s for 64 passages of 512 tokens, tokens/s at 128,
#   512, 2,048 and 8,192 tokens, the MFU those imply against the GPU's bf16 peak, and its parity
#   against the fp32 reference on the CPU. Any engine is held to these numbers.
# QUICK=1 shrinks every sweep (CPU smoke test in CI: DEVICE=cpu PRESET=tiny QUICK=1).
#
# What this script itself needs (checked first; a missing one stops it with this list):
# - bash, and Python 3.10+ ($PYTHON, else .venv/bin/python, else python3) with numpy, torch, tokenizers,
#   safetensors, tqdm, onnx and onnxruntime, and this checkout installed
#   (`pip install --no-deps -e contract -e client -e serving -e .`); no network.
# - DEVICE=cuda (the default): a torch built with CUDA and a visible GPU (nvidia-smi); the reference
#   then runs in bf16. The build image (docker/Dockerfile.build) has a CPU-only torch: run the check
#   there with DEVICE=cpu, or on a machine with a CUDA torch.
# - The engine part, only where `import tensorrt` works (NVIDIA's TensorRT container): TensorRT's
#   Python package, the CUDA runtime (libcudart), and a C compiler (cc) for the repository's batching
#   strategy. The served part, only with TRITONSERVER_BIN: a tritonserver with the TensorRT backend.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-build/gpu-check}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
RB="$PY -m rerank_build.cli"
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-full}
SEQS=${SEQS:-128,512,2048}
BATCHES=${BATCHES:-1,8,32,128}
ITERS=${ITERS:-5}
if [ "${QUICK:-0}" = "1" ]; then SEQS=128; BATCHES=1,8; ITERS=1; fi
missing=()
$PY -c 'import numpy, torch, tokenizers, safetensors, tqdm, onnx, onnxruntime' 2>/dev/null \
  || missing+=("Python packages numpy torch tokenizers safetensors tqdm onnx onnxruntime (for $PY)")
$PY -c 'import rerank_build, rerank_contract, rerank_serving, loadtests' 2>/dev/null \
  || missing+=("this checkout installed: pip install --no-deps -e contract -e client -e serving -e .")
if [ "$DEVICE" != "cpu" ]; then
  $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
    || missing+=("a CUDA build of torch and a visible GPU for DEVICE=$DEVICE (or run with DEVICE=cpu)")
fi
if $PY -c "import tensorrt" 2>/dev/null; then
  command -v cc >/dev/null || command -v gcc >/dev/null || missing+=("a C compiler (cc) for the engine repository")
fi
if [ ${#missing[@]} -gt 0 ]; then
  printf 'gpu_check.sh: missing requirements:\n' >&2
  printf -- '- %s\n' "${missing[@]}" >&2
  exit 2
fi
mkdir -p "$OUT"
REPORT="$OUT/gpu_check.md"
started=$(date +%s)

{
  echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "- host: $(uname -n), $(nproc) CPUs"
  if command -v nvidia-smi >/dev/null; then
    echo "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
  else
    echo "- GPU: none visible (nvidia-smi not found)"
  fi
  echo "- torch: $($PY -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo absent)"
  echo "- TensorRT: $($PY -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || echo absent)"
  echo
} > "$REPORT"

# The number every engine is held to: the PyTorch reference on this device (bf16 on a GPU), its
# throughput at the workloads that matter, the MFU they imply, and its parity against fp32 on the CPU.
DTYPE=bf16; [ "$DEVICE" = "cpu" ] && DTYPE=fp32
QUICK_FLAG=(); [ "${QUICK:-0}" = "1" ] && QUICK_FLAG=(--quick)
$PY -m loadtests.gpu_reference --preset "$PRESET" --device "$DEVICE" --dtype "$DTYPE" "${QUICK_FLAG[@]}" \
    --out "$REPORT"

if $PY -c "import tensorrt; tensorrt.Builder" 2>/dev/null; then
  W="$OUT/small"
  $RB checkpoint --preset small --out "$W/checkpoint"
  $RB export-onnx --checkpoint "$W/checkpoint" --precision fp16 --out "$W/onnx-fp16"
  $RB engine --onnx "$W/onnx-fp16/model.onnx" --precision fp16 --out "$W/engine" \
      --buckets 64,128,256,512,1024,2048 --max-batch 128
  echo "## TensorRT engine (small preset, fp16)" >> "$REPORT"
  { echo '```'; $RB parity --checkpoint "$W/checkpoint" --engine "$W/engine/model.plan"; echo '```'; } >> "$REPORT"
  $PY -m loadtests.gpu_sweep engine --engine "$W/engine/model.plan" --seqs "$SEQS" --batches "$BATCHES" \
      --iters "$ITERS" --out "$REPORT"
  if [ -n "${TRITONSERVER_BIN:-}" ]; then
    TRT_VERSION=$($PY -c 'import tensorrt; print(tensorrt.__version__)')
    $RB repository --checkpoint "$W/checkpoint" --target gpu --engine "$W/engine/model.plan" \
        --out "$W/repository" --serving-tensorrt "$TRT_VERSION" --force
    $PY - "$W/repository" "$W/checkpoint" "$REPORT" "$SEQS" "$BATCHES" <<'PYEOF'
import subprocess, sys
from rerank_serving.server import TritonServer
repo, ckpt, report, seqs, batches = sys.argv[1:]
with TritonServer(repo, log_path=f"{repo}.log") as server:
    with open(report, "a") as fh:
        fh.write("## Served ensemble (Triton, TensorRT engine)\n\n```\n")
        fh.flush()
        subprocess.run([sys.executable, "-m", "rerank_build.cli", "parity", "--checkpoint", ckpt,
                        "--endpoint", server.grpc_url], stdout=fh, check=False)
        fh.write("```\n")
    subprocess.run([sys.executable, "-m", "loadtests.gpu_sweep", "endpoint", "--url", server.grpc_url,
                    "--seqs", seqs, "--batches", batches, "--out", report], check=True)
PYEOF
  fi
else
  echo "## No TensorRT: the engine build, its parity and its throughput did not run" >> "$REPORT"
  echo >> "$REPORT"
fi

echo "- total wall time: $(( $(date +%s) - started )) s" >> "$REPORT"
cat "$REPORT"
