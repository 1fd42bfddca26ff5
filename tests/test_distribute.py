"""tf.distribute: the batch slicing and checks in this process, then MirroredStrategy over two
logical CPU devices and MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1.

Logical devices and a cluster must be set up before TensorFlow starts, so every run under
a strategy is a subprocess, each with a wall-clock limit; the processes a test started
are killed by PID when it ends, whatever happened.
"""

import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import dataset_utils
import distribution
import helpers
import settings
from basic_utils import UserError
from bench_utils import free_ports

PROCESS_LIMIT = 240  # seconds any one run under a strategy may take here
# A 3-layer network with batch norm, augmentation and a weight average, so that every
# part of the step runs under the strategy; 1,350 training images make 43 steps an epoch.
RECIPE = ["--preset", "fast", "--epochs", "1", "--batch-size", "32", "--augment",
          "--weight-average", "0.9", "--checkpoint-every-steps", "2", "--quiet"]
MIRRORED = ["--distribute", "mirrored", "--devices", "CPU:0,CPU:1"]
EPOCH_FILES = {"checkpoint", "confusion_matrix.png", "losses_accs.png", "misclassified.png",
               "metrics.json"}


# ----------------------------------------------------------------------------------------
# In this process: slicing, augmentation, the flags
# ----------------------------------------------------------------------------------------


def _data(train, batch_size, replicas, augment=False):
    images, labels = helpers.synthetic_digits(train, seed=3)
    return dataset_utils.MnistData(
        images[..., None], labels.astype(np.int64), images[:10, ..., None],
        labels[:10].astype(np.int64), images[:10, ..., None], labels[:10].astype(np.int64),
        class_names=tuple("0123456789"), info={}, batch_size=batch_size, seed=0,
        augment=augment, replicas=replicas)


def test_a_last_batch_smaller_than_the_replicas_joins_the_batch_before():
    # 129 = 2 * 64 + 1: one example left for two replicas would leave one of them empty.
    two = _data(129, 64, replicas=2)
    sizes = [len(indices) for indices, _, _ in two.train_batches(1)]
    assert two.steps_per_epoch == 2 and sizes == [64, 65]
    # One replica keeps the short batch, and a remainder as large as the replica count too.
    assert [len(i) for i, _, _ in _data(129, 64, replicas=1).train_batches(1)] == [64, 64, 1]
    assert [len(i) for i, _, _ in _data(130, 64, replicas=2).train_batches(1)] == [64, 64, 2]
    # Every example is trained once an epoch, in the order of the one-replica epoch.
    order = np.concatenate([indices.numpy() for indices, _, _ in two.train_batches(1)])
    np.testing.assert_array_equal(order, _data(129, 64, replicas=1).epoch_order(1))
    with pytest.raises(UserError, match="smaller than the 4 replicas"):
        images, labels = helpers.synthetic_digits(50, seed=0)
        raw = dataset_utils.RawData(images[..., None], labels.astype(np.int64),
                                    images[:5, ..., None], labels[:5].astype(np.int64),
                                    "test:x", "x")
        dataset_utils.load_processing_mnist(settings.make_config("fast", batch_size=3),
                                            raw=raw, announce=lambda *_: None, replicas=4)


def test_an_images_augmentation_does_not_depend_on_the_replica_slicing():
    import tensorflow as tf

    data = _data(200, 50, replicas=1, augment=True)
    indices, seed, augment = next(data.train_batches(1))
    whole, labels = data.make_batch(indices, seed, augment)
    total = tf.constant(50, tf.int64)
    for cut in ([0, 25, 50], [0, 16, 33, 50]):  # two and three replicas
        parts = [data.make_batch(indices[start:end], seed, augment,
                                 (tf.constant(start, tf.int64), total))
                 for start, end in zip(cut, cut[1:])]
        np.testing.assert_array_equal(np.concatenate([p[0].numpy() for p in parts]), whole)
        np.testing.assert_array_equal(np.concatenate([p[1].numpy() for p in parts]), labels)
    # The augmentation is on: the images differ from the stored ones.
    assert not np.allclose(whole.numpy(), data.train_images[indices.numpy()] / 255.0)


def test_distribute_flags_are_checked_before_tensorflow():
    with pytest.raises(UserError, match="--xla cannot be combined with --distribute mirrored"):
        settings.make_config(distribute="mirrored", xla=True, deterministic=False)
    with pytest.raises(UserError, match="--devices is for --distribute mirrored"):
        settings.make_config(devices="GPU:0")
    for text in ("GPU0", "TPU:0", "CPU:0,CPU:0", "CPU:0,GPU:1"):
        with pytest.raises(UserError, match="--devices"):
            settings.make_config(distribute="mirrored", devices=text)
    assert settings.parse_devices("gpu:0, GPU:1") == (("GPU", 0), ("GPU", 1))
    for value, problem in ((None, "needs the TF_CONFIG"), ("{nope", "not a cluster"),
                           ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", '
                            '"index": 1}}', "does not hold"),
                           ('{"cluster": {"ps": ["a:1"], "worker": ["b:1"]}, "task": '
                            '{"type": "worker", "index": 0}}', "ps")):
        with pytest.raises(UserError, match=problem):
            distribution.read_tf_config({} if value is None else {"TF_CONFIG": value})
    jobs, task_type, index, worker, workers = distribution.read_tf_config({"TF_CONFIG": json.dumps(
        {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
         "task": {"type": "worker", "index": 1}})})
    assert (task_type, index, worker, workers) == ("worker", 1, 2, 3)
    # The last line of a collective's error, with the task it names, in one line.
    import tensorflow as tf

    error = tf.errors.UnavailableError(None, None, (
        "Graph execution error:\n\nDetected at node x\n  File \"a.py\", line 1\n"
        "Collective ops is aborted by: The following tasks are unhealthy (stopped sending "
        "heartbeats):\n/job:worker/replica:0/task:1\n"))
    phrase = distribution.failure_message(error)
    assert "\n" not in phrase and "unhealthy" in phrase and phrase.endswith("[worker 1]")


# ----------------------------------------------------------------------------------------
# Subprocesses
# ----------------------------------------------------------------------------------------


class Processes:
    """main.py subprocesses with their output in files; `finish` kills what is left."""

    def __init__(self, folder):
        self.folder, self.started = pathlib.Path(folder), []

    def start(self, name, arguments, cwd=None, **env):
        out = open(self.folder / f"{name}.out", "w")
        err = open(self.folder / f"{name}.err", "w")
        process = subprocess.Popen([sys.executable, helpers.MAIN, *map(str, arguments)],
                                   stdout=out, stderr=err, cwd=cwd or self.folder,
                                   env=helpers.environment(**env))
        process.name, process.files = name, (out, err)
        self.started.append(process)
        return process

    def workers(self, name, arguments, folders):
        """Two multi-worker processes, each in its own folder (its "machine")."""
        ports = free_ports(2)
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        return [self.start(f"{name}-{index}", ["--distribute", "multi-worker", *arguments],
                           cwd=folder, TF_CONFIG=json.dumps(
                               {"cluster": cluster, "task": {"type": "worker", "index": index}}))
                for index, folder in enumerate(folders)]

    def wait(self, process, limit=PROCESS_LIMIT):
        """The exit code of `process`, and its stdout and stderr."""
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.finish()
            raise AssertionError(f"{process.name} ran past {limit} s: {self.text(process)}")
        return code, *self.text(process)

    def text(self, process):
        for handle in process.files:
            handle.flush()
        return tuple(pathlib.Path(handle.name).read_text() for handle in process.files)

    def finish(self):
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()
            for handle in process.files:
                handle.close()


@pytest.fixture
def processes(tmp_path):
    started = Processes(tmp_path)
    yield started
    started.finish()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Data for every run of this file; the reference, a 2-replica MirroredStrategy run
    that nothing interrupted; a second such run; and the replica probe's findings. The
    three processes run at once (TensorFlow's start-up keeps one core busy each)."""
    folder = tmp_path_factory.mktemp("distribute")
    data = helpers.write_mnist_folder(folder / "idx", train=1500, test=100)
    started = Processes(folder)
    try:
        runs = {name: started.start(name, [*RECIPE, *MIRRORED, "--data-dir", data,
                                           "--run-dir", folder / name])
                for name in ("mirrored", "again")}
        probe = subprocess.Popen(
            [sys.executable, str(pathlib.Path(__file__).with_name("mirrored_probe.py")), "6"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=helpers.environment())
        started.started.append(probe)
        probe.files = ()
        try:
            probe_out, probe_err = probe.communicate(timeout=PROCESS_LIMIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the probe ran past {PROCESS_LIMIT} s") from None
        for name, process in runs.items():
            code, out, err = started.wait(process)
            assert code == 0, err
    finally:
        started.finish()
    return {"data": str(data), "reference": folder / "mirrored", "again": folder / "again",
            "probe": (probe.returncode, probe_out, probe_err)}


def _layout(run_dir):
    run_dir = pathlib.Path(run_dir)
    top = {path.name for path in run_dir.iterdir()}
    folders = sorted(name for name in top if name.startswith("epoch_"))
    return top, folders, [{path.name for path in (run_dir / name).iterdir()} for name in folders]


def test_mirrored_replicas_hold_the_same_variables_and_match_one_device(shared):
    code, out, err = shared["probe"]
    assert code == 0, err
    probe = json.loads(out)
    assert probe["replicas"] == 2 and set(probe["copies"].values()) == {2}
    # Every variable, batch norm's moving statistics included, is the same on both replicas.
    assert {name: spread for name, spread in probe["replica_spread"].items() if spread} == {}
    assert any("moving_mean" in name for name in probe["replica_spread"])
    # So in mixed precision, the loss scale included.
    assert {name: spread for name, spread in probe["mixed_spread"].items() if spread} == {}
    assert any("scale" in name for name in probe["mixed_spread"])
    # Without batch norm and dropout the two replicas compute the one-device steps, up to
    # the order in which the gradient sums are added: 6 steps of float32 rounding, allowed
    # 64 units in the last place of the largest weight (about 10 a step).
    tolerance = 64 * np.finfo(np.float32).eps * probe["seed_max_weight"]
    assert probe["seed_max_difference"] <= tolerance
    one, two = probe["seed_loss"]
    assert abs(one - two) <= 64 * np.finfo(np.float32).eps * abs(one)
    assert probe["seed_matrix_equal"]


def test_mirrored_runs_are_complete_repeatable_and_continue_on_another_count(shared,
                                                                              processes,
                                                                              tmp_path):
    reference = shared["reference"]
    top, folders, contents = _layout(reference)
    assert folders == ["epoch_0001"] and all(c == EPOCH_FILES for c in contents)
    assert {"config.json", "metrics.csv", "LATEST", "report.html", "best",
            "tensorboard"} <= top and "in_progress.checkpoint" not in top
    record = json.loads((reference / "config.json").read_text())
    assert record["distribution"] == {"strategy": "mirrored", "replicas": 2, "workers": 1}
    again = shared["again"]
    helpers.assert_same_run(reference, again)
    # Another replica count continues the run, says so, and config.json records it.
    code, out, err = processes.wait(processes.start(
        "one", [*RECIPE[:-1], "--epochs", "2", "--data-dir", shared["data"], "--run-dir",
                again]))
    assert code == 0, err
    assert "another distribution (mirrored, 2 replicas -> none, 1 replica)" in out
    assert "numbers will differ slightly" in out
    record = json.loads((again / "config.json").read_text())
    assert record["distribution"] == {"strategy": "none", "replicas": 1, "workers": 1}
    assert record["distribution_changes"] == [{
        "after_epoch": 1, "from": {"strategy": "mirrored", "replicas": 2, "workers": 1},
        "to": {"strategy": "none", "replicas": 1, "workers": 1}}]
    assert len(helpers.read_metrics(again)) == 2


def test_two_workers_train_as_two_mirrored_replicas_and_only_the_chief_writes(shared,
                                                                               processes,
                                                                               tmp_path):
    machines = [tmp_path / "machine0", tmp_path / "machine1"]
    for machine in machines:
        machine.mkdir()
    # The same command on both "machines"; the relative run directory would be a folder
    # of each, but only the chief's may appear.
    workers = processes.workers("both", [*RECIPE, "--data-dir", shared["data"], "--run-dir",
                                         "run"], machines)
    results = [processes.wait(worker) for worker in workers]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert list(machines[1].iterdir()) == []
    assert _layout(machines[0] / "run") == _layout(shared["reference"])
    helpers.assert_same_run(shared["reference"], machines[0] / "run")
    record = json.loads((machines[0] / "run" / "config.json").read_text())
    assert record["distribution"] == {"strategy": "multi-worker", "replicas": 2, "workers": 2}
    assert "The chief (worker 0) holds the results" in results[1][1]


def _checkpoint_step(run_dir):
    """The step of run_dir's mid-epoch checkpoint, once it is readable (else None)."""
    try:
        with np.load(pathlib.Path(run_dir) / "in_progress.checkpoint") as archive:
            return int(archive["state/step"])
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _wait_for_step_after(run_dir, step, process, limit=PROCESS_LIMIT):
    """Wait until the chief has checkpointed a step after `step`; returns that step."""
    deadline = time.monotonic() + limit
    while (_checkpoint_step(run_dir) or 0) <= step:
        assert process.poll() is None, f"{process.name} ended: {process.name} output above"
        assert time.monotonic() < deadline, f"no checkpoint after step {step} in {limit} s"
        time.sleep(0.01)
    return _checkpoint_step(run_dir)


def test_multi_worker_faults_stop_every_worker_and_resume_exactly(shared, processes, tmp_path):
    arguments = [*RECIPE, "--data-dir", shared["data"], "--run-dir", tmp_path / "run"]
    run_dir = tmp_path / "run"

    # SIGTERM to worker 1: both stop after the same step, and the chief checkpoints it.
    workers = processes.workers("term", arguments, [tmp_path, tmp_path])
    _wait_for_step_after(run_dir, 0, workers[0])
    workers[1].send_signal(signal.SIGTERM)
    results = [processes.wait(worker) for worker in workers]
    assert [code for code, _, _ in results] == [143, 143], [err for _, _, err in results]
    stops = [out[out.index("Stopped"):].splitlines()[0] for _, out, _ in results]
    assert "received by another worker" in stops[0] and "received by" not in stops[1]
    # "... epoch 1 is checkpointed after step 9 of 43." / "the chief checkpoints epoch 1
    # after step 9 of 43."
    places = [stop.split(" after step ")[-1] for stop in stops]
    stopped = _checkpoint_step(run_dir)
    assert places[0] == places[1] == f"{stopped} of 43.", stops

    # Both resume, and worker 1 is killed: the chief exits with one line, code 1.
    workers = processes.workers("kill-one", arguments, [tmp_path, tmp_path])
    reached = _wait_for_step_after(run_dir, stopped, workers[0])
    workers[1].kill()
    killed = time.monotonic()
    code, out, err = processes.wait(workers[0], limit=60)
    print(f"chief exited {time.monotonic() - killed:.1f} s after worker 1 was killed")
    assert code == 1 and err.count("\n") == 1 and "failed or stopped answering" in err, err
    # Nothing half-published: no epoch folder, no LATEST, no temporary file.
    assert sorted(path.name for path in run_dir.iterdir()) == ["config.json",
                                                               "in_progress.checkpoint"]
    assert _checkpoint_step(run_dir) >= reached

    # Both resume again and are both killed with SIGKILL.
    workers = processes.workers("kill-both", arguments, [tmp_path, tmp_path])
    _wait_for_step_after(run_dir, _checkpoint_step(run_dir), workers[0])
    for worker in workers:
        worker.kill()

    # The last restart runs to the end: the same as a run that was never interrupted.
    workers = processes.workers("finish", arguments, [tmp_path, tmp_path])
    results = [processes.wait(worker) for worker in workers]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    helpers.assert_same_run(shared["reference"], run_dir)
