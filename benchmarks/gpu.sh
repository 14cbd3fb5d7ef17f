#!/usr/bin/env bash
# Issue 15 on one GPU, in under 8 minutes once the venvs exist (the timeouts below sum to 480 s):
# first its items 1-3 (several probes per pass, streamed passes by N, Lanczos vectors on disk) and
# the 5M-parameter VGG, then against the PyTorch peers on CUDA (item 4) and ResNet-32 against the
# gradient-pass limit. Each step appends its table when it finishes; a step cut by its timeout
# appends nothing and the next one still runs.
#
#   bash benchmarks/gpu.sh            # from the repository root, on a machine with an NVIDIA GPU
#
# Installs what it needs into two venvs of its own (benchmarks/.venv-gpu: hessflow with
# tensorflow[and-cuda]; benchmarks/.venv-peers-gpu: requirements-peers.txt, whose torch pin is the
# CUDA build on PyPI). Without network, set WHEELS=/path/to/wheel/dir (pip --no-index
# --find-links). Results are appended to benchmarks/RESULTS.md; logs go to benchmarks/out/ (or
# $OUT/ when set).
set -euo pipefail
cd "$(dirname "$0")/.."
# TensorFlow would take the whole card at start-up and leave none to the torch workers.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 TF_FORCE_GPU_ALLOW_GROWTH=true
LOGS="${OUT:-benchmarks/out}"
mkdir -p "$LOGS" benchmarks/out
PY="${PYTHON:-python3}"

echo "== card"
if ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; then
    echo "no NVIDIA GPU visible (nvidia-smi failed): this script is for GPU sessions" >&2
    exit 2
fi

pip_install() {  # venv, args...
    local venv="$1"; shift
    if [[ -n "${WHEELS:-}" ]]; then
        "$venv/bin/pip" install -q --no-index --find-links "$WHEELS" "$@"
    else
        "$venv/bin/pip" install -q "$@"
    fi
}

start=$(date +%s)
echo "== venvs"
if [[ ! -x benchmarks/.venv-gpu/bin/python ]]; then
    "$PY" -m venv benchmarks/.venv-gpu
    pip_install benchmarks/.venv-gpu -e . 'tensorflow[and-cuda]>=2.20,<2.22'
fi
if [[ ! -x benchmarks/.venv-peers-gpu/bin/python ]]; then
    "$PY" -m venv benchmarks/.venv-peers-gpu
    pip_install benchmarks/.venv-peers-gpu -r benchmarks/requirements-peers.txt
fi
export HESSFLOW_PEERS_PYTHON="$PWD/benchmarks/.venv-peers-gpu/bin/python"
benchmarks/.venv-gpu/bin/python -c "import tensorflow as tf; gpus = tf.config.list_physical_devices('GPU'); print('TF', tf.__version__, gpus); assert gpus, 'TensorFlow sees no GPU'"
"$HESSFLOW_PEERS_PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0)); assert torch.cuda.is_available()"
echo "installs: $(( $(date +%s) - start )) s"

echo "== issue 15, item 3: several probes per pass (B products from one primal pass)"
timeout 120 benchmarks/.venv-gpu/bin/python benchmarks/probes_per_pass.py --cases cnn resnet32 \
    --probes 2 4 8 --reps 3 --resnet-images 2048 --no-memory 2>&1 | tee "$LOGS/gpu_probes_per_pass.log" || true

echo "== issue 15, items 1, 2 and 5: streaming data, Lanczos vectors on disk, the 5M-parameter VGG"
timeout 70 benchmarks/.venv-gpu/bin/python benchmarks/stream_memory.py --scaling 100000 400000 \
    --batch 1000 --products 2 2>&1 | tee "$LOGS/gpu_stream.log" || true
timeout 40 benchmarks/.venv-gpu/bin/python benchmarks/vector_store.py --sizes 1e6 1e7 --steps 20 \
    2>&1 | tee "$LOGS/gpu_vector_store.log" || true
timeout 60 benchmarks/.venv-gpu/bin/python benchmarks/big_model.py --images 1024 --batch 256 --steps 6 \
    2>&1 | tee "$LOGS/gpu_big_model.log" || true

echo "== issue 15, item 4: against the peers on CUDA"
timeout 120 benchmarks/.venv-gpu/bin/python benchmarks/peers.py --device cuda \
    --images 2000 --batch 500 --steps 3 --reps 3 --density-steps 90 --density-draws 10 \
    2>&1 | tee "$LOGS/gpu_peers.log" || true

echo "== against the limit (ResNet-32 on 1,000 generated CIFAR-sized images)"
timeout 70 benchmarks/.venv-gpu/bin/python benchmarks/hvp_cost.py \
    --resnet-images 1000 --resnet-batches 500 1000 --cnn-batches 1797 \
    --lever-resnet-images 500 --reps 2 2>&1 | tee "$LOGS/gpu_hvp_cost.log" || true

cp benchmarks/RESULTS.md "$LOGS/RESULTS.md" 2>/dev/null || true
echo "total: $(( $(date +%s) - start )) s"
