"""Shared by the benchmarks: the machine's description and running `code/main.py` as users do."""

import csv
import os
import platform
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CODE = os.path.join(HERE, "..", "code")
MAIN = os.path.join(CODE, "main.py")
DEFAULT_DATA_DIR = os.path.join(HERE, "..", "..", "shared", "data", "mnist")

# "Epoch  3/20  (25.0 s: train 23.0 s, validation 0.8 s, test 1.3 s)"
EPOCH_HEADER = re.compile(r"^Epoch\s+(\d+)/\d+\s+\(.*?: (.*)\)$")
# "  saved /run/epoch_0003 (plots and checkpoint rendered in 0.6 s, written in 0.01 s)"
SAVED_LINE = re.compile(r"rendered in ([0-9.]+) s, written in ([0-9.]+) s"
                        r"(?:; TensorBoard, report(?:, best model)? in ([0-9.]+) s)?")


def cpu_name():
    """The CPU's name, family and model, and the vector instructions that decide the
    kernels' speed and last bits, e.g. 'AMD EPYC (family 26, model 2; AVX2, AVX-512 with
    VNNI and BF16)'."""
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    vector = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512")) if flag in flags]
    extras = [name for flag, name in (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"))
              if flag in flags]
    if extras and "AVX-512" in vector:
        vector[-1] += " with " + " and ".join(extras)
    if "amx_tile" in flags:
        vector.append("AMX")
    return (f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}; {', '.join(vector) or 'no AVX2'})")


def machine():
    """One line naming the machine and library versions, for every table's caption."""
    import tensorflow as tf
    import keras

    gpus = tf.config.list_physical_devices("GPU")
    accelerator = ", ".join(tf.config.experimental.get_device_details(gpu).get("device_name", "GPU")
                            for gpu in gpus) if gpus else "no GPU"
    return (f"{cpu_name()}, {os.cpu_count()} logical cores, {accelerator}; "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}, Python {platform.python_version()}")


def run_benchmark(main):
    """Call a benchmark's `main`; Ctrl-C or a timeout's SIGINT ends it in one line, with
    no traceback."""
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(f"{os.path.basename(sys.argv[0])}: interrupted")


def run_main(arguments, marker=None):
    """Run main.py with `arguments`; returns (stdout, wall seconds, seconds until `marker`).

    `marker` is the start of the line printed just before training starts ('Model:' for a
    fresh run, 'Resuming' when resuming); None skips that measurement.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, MAIN, *map(str, arguments)], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    lines, ready = [], None
    try:
        for line in process.stdout:
            lines.append(line)
            if marker is not None and ready is None and line.startswith(marker):
                ready = time.perf_counter() - started
        process.wait()
    except BaseException:  # Ctrl-C, or SystemExit from a benchmark's SIGTERM handler
        # Let main.py stop at its next safe point (SIGTERM: no second-Ctrl-C abort) before
        # the caller removes the run directory under it; `timeout` sends SIGINT twice (to
        # its command, then to the process group), so further ones are ignored meanwhile.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        process.terminate()
        try:
            process.wait(timeout=10)  # it stops within a step and one checkpoint write
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    if process.returncode != 0:
        raise SystemExit(f"main.py {' '.join(map(str, arguments))} failed:\n" + "".join(lines))
    return "".join(lines), time.perf_counter() - started, ready


def epoch_timings(output):
    """{epoch: {'train', 'validation', 'test', 'render', 'save', 'outputs': seconds}} from
    main.py's output.

    The epoch's header line gives the first three; the 'saved ...' line after it gives
    the time to render the checkpoint and plots, the time to write the folder, and the
    time to write the TensorBoard events, the report and (when the epoch is the best so
    far) best/.
    """
    timings, epoch = {}, None
    for line in output.splitlines():
        header = EPOCH_HEADER.match(line)
        if header:
            epoch = int(header.group(1))
            timings[epoch] = {name: float(seconds)
                              for name, seconds in re.findall(r"(\w+) ([0-9.]+) s", header.group(2))}
            continue
        saved = SAVED_LINE.search(line)
        if saved and epoch is not None:
            timings[epoch]["render"] = float(saved.group(1))
            timings[epoch]["save"] = float(saved.group(2))
            if saved.group(3) is not None:
                timings[epoch]["outputs"] = float(saved.group(3))
    return timings


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.csv"), encoding="utf-8") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def free_ports(count):
    """`count` TCP ports on 127.0.0.1 that were free a moment ago (for local clusters)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports
