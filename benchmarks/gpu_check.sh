#!/usr/bin/env bash
# GPU check: the speed and accuracy tables on a machine with a GPU (its steps are capped
# at 60 + 90 + 90 + 120 + 150 s, so at most about 9 minutes; their real length is unmeasured).
#
#   bash benchmarks/gpu_check.sh [MNIST_IDX_DIR]      (default: ../shared/data/mnist)
#
# Needs the project's requirements installed with a CUDA-enabled TensorFlow
# (pip install "tensorflow[and-cuda]" on Linux). Prints the card, then:
#   0. where the training set is held (it should be the GPU);
#   1. speed.py with the GPU defaults (--precision auto = mixed), then float32, then mixed
#      with XLA (op determinism off), each against model.fit() on the same settings;
#   2. accuracy.py, fast and standard presets, seed 0, GPU defaults.
# Each step has its own time limit; a failure or timeout is reported, the next step runs,
# and the script exits with the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/mnist}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3

failed=0
step() {  # step SECONDS COMMAND...: run with a time limit, say so when it fails
  local limit=$1 status=0; shift
  echo; echo "## $*"; echo
  timeout "$limit" "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "gpu_check.sh: '$*' failed or ran out of time (exit $status)"
    failed=$((failed + 1))
  fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python - <<'PY' || exit 1
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
if not gpus:
    raise SystemExit("gpu_check.sh: TensorFlow sees no GPU (is a CUDA-enabled TensorFlow installed?)")
for gpu in gpus:
    print("TensorFlow", tf.__version__, "uses", tf.config.experimental.get_device_details(gpu))
PY
# Where the training set lives (README: copied into GPU memory once, as floats).
step 60 python - "$data" <<'PY'
import sys
sys.path.insert(0, "code")
import basic_utils
basic_utils.set_tensorflow_environment()
import dataset_utils, learning_env_setting
config = learning_env_setting.make_config(data_dir=sys.argv[1])
images, labels = dataset_utils.load_processing_mnist(config, announce=lambda *_: None)._train_tensors()
print(f"training images on {images.device} as {images.dtype.name}; labels on {labels.device}")
PY
speed=(python benchmarks/speed.py --data-dir "$data" --repeats 2 --overhead-epochs 2)
step 90 "${speed[@]}"
step 90 "${speed[@]}" --precision float32
step 120 "${speed[@]}" --xla
step 150 python benchmarks/accuracy.py --data-dir "$data" --recipes fast standard --seeds 0
exit "$failed"
