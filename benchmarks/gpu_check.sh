#!/usr/bin/env bash
# GPU check: the speed and accuracy tables on a machine with a GPU, in under 5 minutes.
#
#   bash benchmarks/gpu_check.sh [MNIST_IDX_DIR]      (default: ../shared/data/mnist)
#
# Needs the project's requirements installed with a CUDA-enabled TensorFlow
# (pip install "tensorflow[and-cuda]" on Linux). Prints the card, then the tables of
# benchmarks/speed.py and benchmarks/accuracy.py (fast and standard presets, seed 0).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/mnist}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python - <<'PY'
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
if not gpus:
    raise SystemExit("gpu_check.sh: TensorFlow sees no GPU (is a CUDA-enabled TensorFlow installed?)")
for gpu in gpus:
    print("TensorFlow", tf.__version__, "uses", tf.config.experimental.get_device_details(gpu))
PY
# Each step reports its own failure or timeout and the next one still runs.
timeout 120 python benchmarks/speed.py --data-dir "$data" --repeats 2 --overhead-epochs 2 \
  || echo "gpu_check.sh: speed.py failed or ran out of time (exit $?)"
timeout 150 python benchmarks/accuracy.py --data-dir "$data" --recipes fast standard --seeds 0 \
  || echo "gpu_check.sh: accuracy.py failed or ran out of time (exit $?)"
