#!/usr/bin/env bash
# GPU check: the speed and accuracy tables on a machine with a GPU, in under 5 minutes.
#
#   bash benchmarks/gpu_check.sh [MNIST_IDX_DIR]      (default: ../shared/data/mnist)
#
# Needs the project's requirements installed with a CUDA-enabled TensorFlow
# (pip install "tensorflow[and-cuda]" on Linux). Prints the card, then, most telling first:
#   1. where the training set is held (it should be the GPU);
#   2. speed.py with the GPU defaults (--precision auto = mixed) against model.fit();
#   3. accuracy.py, fast preset, seed 0, GPU defaults;
#   4. accuracy.py, standard preset, seed 0, GPU defaults;
#   5. speed.py in float32, then 6. mixed with XLA (op determinism off).
# Each step has its own time limit, cut to what is left of the whole script's 280 s; a
# failed or timed-out step is reported and the next one runs; a step with no time left
# is reported as skipped. The exit status is the number of failed or skipped steps.
# GPU_CHECK_ALLOW_CPU=1 runs the steps without a GPU (to try the script itself).
set -uo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/mnist}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
budget=280  # seconds for the whole script, start-up checks included (a step may overrun
           # its limit by up to 15 s while it stops)

failed=0
step() {  # step SECONDS COMMAND...: run with a time limit, say so when it fails
  local cap=$1 status=0; shift
  local left=$((budget - SECONDS))
  local limit=$((cap < left ? cap : left))
  echo; echo "## $*"; echo
  if [ "$limit" -lt 10 ]; then
    echo "gpu_check.sh: skipped: the script's ${budget} s are spent"
    failed=$((failed + 1))
    return
  fi
  echo "(limit ${limit} s)"
  # SIGINT first, so that the benchmarks stop main.py and remove their temporary folders;
  # SIGKILL 15 s later.
  timeout -s INT -k 15 "$limit" "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "gpu_check.sh: '$*' failed or ran out of time (exit $status)"
    failed=$((failed + 1))
  fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 60 python - <<'PY' || exit 1
import os
try:
    import tensorflow as tf
except ImportError as error:
    raise SystemExit(f"gpu_check.sh: TensorFlow cannot be imported ({error}); install the "
                     "project's requirements and a CUDA-enabled TensorFlow "
                     "(pip install -r requirements.txt \"tensorflow[and-cuda]\").")
gpus = tf.config.list_physical_devices("GPU")
if not gpus and os.environ.get("GPU_CHECK_ALLOW_CPU") != "1":
    raise SystemExit("gpu_check.sh: TensorFlow sees no GPU (is a CUDA-enabled TensorFlow "
                     "installed?); GPU_CHECK_ALLOW_CPU=1 runs the steps anyway.")
print("TensorFlow", tf.__version__, "on", ", ".join(
    str(tf.config.experimental.get_device_details(gpu)) for gpu in gpus) or "the CPU only")
PY
# Where the training set lives (README: copied into GPU memory once, as floats).
step 30 python - "$data" <<'PY'
import sys
sys.path.insert(0, "code")
import basic_utils
basic_utils.set_tensorflow_environment()
import dataset_utils, settings
config = settings.make_config(data_dir=sys.argv[1])
images, labels = dataset_utils.load_processing_mnist(config, announce=lambda *_: None).training_tensors()
print(f"training images on {images.device} as {images.dtype.name}; labels on {labels.device}")
PY
speed=(python benchmarks/speed.py --data-dir "$data" --repeats 2 --overhead-epochs 2)
accuracy=(python benchmarks/accuracy.py --data-dir "$data" --seeds 0 --recipes)
step 75 "${speed[@]}"
step 40 "${accuracy[@]}" fast
step 120 "${accuracy[@]}" standard
step 60 "${speed[@]}" --precision float32
step 75 "${speed[@]}" --xla
echo; echo "gpu_check.sh: done in ${SECONDS} s, ${failed} step(s) failed or skipped"
exit "$failed"
