"""How fast a multi-worker run notices a dead or frozen worker: two worker processes on 127.0.0.1.

    python benchmarks/worker_faults.py --data-dir ../shared/data/mnist

Each trial starts two workers (`--distribute multi-worker`, the standard preset) on free
ports, waits until the chief has written a mid-epoch checkpoint (training is under way),
then does one thing to one worker: SIGKILL (it dies) or SIGSTOP (it freezes), to worker 1
or to the chief. It measures how long the other worker takes to exit, its exit code, and
whether its error is one line; then it kills what is left. The run directories are
temporary.
"""

import argparse
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench_utils import CODE, DEFAULT_DATA_DIR, free_ports, machine, run_benchmark

LIMIT = 300  # seconds a trial may wait for anything


def trial(data_dir, folder, action, victim):
    """Seconds until the other worker exited, its exit code and whether it said one line."""
    run_dir = pathlib.Path(folder) / "run"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        err = open(pathlib.Path(folder) / f"worker{index}.err", "w+")
        processes.append((subprocess.Popen(
            [sys.executable, os.path.join(CODE, "main.py"), "--distribute", "multi-worker",
             "--data-dir", data_dir, "--run-dir", str(run_dir), "--checkpoint-every-steps",
             "20", "--quiet"], stdout=subprocess.DEVNULL, stderr=err, env=env), err))
    try:
        deadline = time.monotonic() + LIMIT
        while not (run_dir / "in_progress.checkpoint").exists():
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in processes):
                raise RuntimeError("training did not start")
            time.sleep(0.05)
        time.sleep(1.0)  # well inside a step's stream, not at the checkpoint
        target, (other, err) = processes[victim][0], processes[1 - victim]
        target.send_signal(signal.SIGKILL if action == "killed" else signal.SIGSTOP)
        hit = time.monotonic()
        code = other.wait(timeout=LIMIT)
        seconds = time.monotonic() - hit
        err.seek(0)
        lines = [line for line in err.read().splitlines() if line.strip()]
        return seconds, code, len(lines) == 1 and lines[0].startswith("main.py: error:")
    finally:
        for process, err in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            err.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="folder with the four MNIST IDX files (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="trials per case (default: %(default)s)")
    given = parser.parse_args()
    rows = []
    for action in ("killed", "frozen"):
        for victim, who in ((1, "worker 1"), (0, "the chief")):
            results = []
            for repeat in range(given.repeats):
                with tempfile.TemporaryDirectory() as folder:
                    results.append(trial(given.data_dir, folder, action, victim))
                print(f"  {who} {action}, trial {repeat + 1}: {results[-1]}", file=sys.stderr)
            seconds = [result[0] for result in results]
            rows.append((f"{who} {action}", statistics.median(seconds), min(seconds),
                         max(seconds), sorted({result[1] for result in results}),
                         all(result[2] for result in results)))
    print(f"Machine: {machine()}")
    print(f"Two workers on 127.0.0.1, standard preset, {given.repeats} trials per case:\n")
    print("| what happened | the other exits after (median) | range | exit codes | one-line error |")
    print("| --- | --- | --- | --- | --- |")
    for what, median, low, high, codes, one_line in rows:
        print(f"| {what} | {median:.1f} s | {low:.1f}-{high:.1f} s | "
              f"{', '.join(map(str, codes))} | {'yes' if one_line else 'no'} |")


if __name__ == "__main__":
    run_benchmark(main)
