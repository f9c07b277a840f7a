#!/usr/bin/env bash
# The GPU checks, in one short run on a CUDA machine (about 4 minutes on one H200 before the reader
# rounds of step 2 were added; they add 16 passes of the reader over the store):
#   1. tests/test_cuda.py: embed on the GPU agrees with the CPU; every fusion trains and evaluates on it;
#   2. bench_embed.py: the reader alone at 8 and 12 workers (its buffers held, as the stage does, and
#      dropped; interleaved rounds), then ResNet-50 (256 px; bf16 and fp32 at
#      the default batch 256, bf16 at 512) and a ViT-L/16 (UNI's architecture, 224 px; bf16):
#      embed (steady) vs the bare model at the same batch, 3 interleaved rounds each.
# Usage: bash benchmarks/gpu_check.sh [LOGDIR]   (logs to LOGDIR, default bench-work/gpu)
# GPU utilisation per second is logged by `nvidia-smi dmon` alongside (dmon.log).
set -uo pipefail
LOG=${1:-bench-work/gpu}
PY=${PYTHON:-python3}
STORE=${STORE:-/tmp/brcatool-bench-embed-gpu}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1
quiet() { grep -vE 'RANDOM weights|only good for tests|and demos\. Use|^tests and demos|^demos\. Use'; }

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  echo "cores $(nproc); load $(cut -d' ' -f1-3 /proc/loadavg)"
  $PY -c "import torch, torchvision, timm, zarr, polars, numpy; print('torch', torch.__version__, \
'torchvision', torchvision.__version__, 'timm', timm.__version__, 'zarr', zarr.__version__, \
'polars', polars.__version__, 'numpy', numpy.__version__)"
} 2>&1 | tee "$LOG/machine.txt"
nvidia-smi dmon -s u -d 1 >"$LOG/dmon.log" 2>&1 &
DMON=$!
trap 'kill "$DMON" 2>/dev/null' EXIT

status=0
$PY -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$LOG/test_cuda.log" || status=1
$PY benchmarks/bench_embed.py --device cuda --encoders resnet50 --patches 20000 --precisions bf16,fp32 \
  --repeats 3 --workdir "$STORE" --reader-workers 8,12 2>&1 | quiet | tee "$LOG/bench_embed_resnet50.log" \
  || status=1
$PY benchmarks/bench_embed.py --device cuda --encoders resnet50 --patches 20000 --precisions bf16 \
  --batch-size 512 --repeats 3 --workdir "$STORE" 2>&1 | quiet | tee "$LOG/bench_embed_resnet50_b512.log" \
  || status=1
$PY benchmarks/bench_embed.py --device cuda --encoders uni --patches 20000 --precisions bf16 \
  --repeats 3 --workdir "$STORE" 2>&1 | quiet | tee "$LOG/bench_embed_vitl.log" || status=1
exit $status
