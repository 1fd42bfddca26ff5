"""Where the steps compute: the tf.distribute strategy of --distribute, which worker is the chief, and the cross-replica pieces the loop needs.

`create(config)` makes the strategy before any other TensorFlow call (logical devices and
a multi-worker cluster can only be set up while TensorFlow has not started its runtime):

- none: TensorFlow's default strategy, one device, exactly the path without tf.distribute;
- mirrored: `tf.distribute.MirroredStrategy` over this machine's GPUs, or the devices of
  --devices (CPU:0,CPU:1 splits the CPU into logical devices, which is how the tests run
  it without GPUs);
- multi-worker: `tf.distribute.MultiWorkerMirroredStrategy` over the cluster that the
  standard TF_CONFIG variable describes, so any launcher that writes it can start a run.

The train and evaluation steps (`train_validation_test.Steps`) run through
`strategy.run`: each replica takes its slice of a global batch (`replica_slice`), and the
sums are reduced across replicas. The chief (task 0) alone writes the run directory; the
other workers take the chief's state (`share_from_chief`) and write nothing. This module
imports TensorFlow only inside its functions, so `read_tf_config` checks TF_CONFIG before
TensorFlow's slow start.
"""

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np

import settings
from basic_utils import UserError

# A worker whose coordination-service heartbeats stop for this long is declared dead, and
# every other worker's collectives are aborted. TensorFlow's default is 10 s; a training
# step never blocks the heartbeat thread, so a shorter limit only detects failures sooner.
HEARTBEAT_TIMEOUT_SECONDS = 5
# How long a finishing worker waits at TensorFlow's shutdown barrier for the others.
SHUTDOWN_BARRIER_SECONDS = 30
# How long a worker waits for all of TF_CONFIG's tasks to start before it gives up (alone,
# TensorFlow waits in silence).
REGISTER_TIMEOUT_SECONDS = 300
JOBS = ("chief", "worker")
# Set once this process has joined a multi-worker cluster (see `leave`).
joined_cluster = False


class WorkerFailed(Exception):
    """Another worker of a multi-worker run died or stopped answering; the message says
    which error TensorFlow reported, as a phrase."""


@dataclasses.dataclass(frozen=True)
class Distribution:
    """The strategy of one invocation and this process's place in it."""

    strategy: object  # a tf.distribute.Strategy
    name: str  # settings.DISTRIBUTE
    replicas: int  # replicas in sync, all workers together
    workers: int = 1
    worker: int = 0  # this worker's number, 0 for the chief
    devices: tuple = ()  # this worker's devices, as TensorFlow names them

    @property
    def is_chief(self):
        return self.worker == 0

    @property
    def distributed(self):
        return self.name != "none"

    def record(self):
        """What config.json and the resume note say of the distribution."""
        return {"strategy": self.name, "replicas": self.replicas, "workers": self.workers}

    def describe(self):
        """In words, for the start-up report."""
        if not self.distributed:
            return "one device"
        where = ", ".join(self.devices)
        if self.name == "mirrored":
            return f"MirroredStrategy, {_count(self.replicas, 'replica')} ({where})"
        return (f"MultiWorkerMirroredStrategy, {_count(self.replicas, 'replica')} on "
                f"{_count(self.workers, 'worker')}; this is worker {self.worker}"
                + (" (the chief)" if self.is_chief else "") + f" ({where})")


def _count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


def read_tf_config(environ=os.environ):
    """(cluster {job: [addresses]}, task type, task index, worker number, workers) of the
    TF_CONFIG variable; raises `UserError` when it is missing or does not describe a
    cluster of chief and worker tasks that includes this task."""
    text = environ.get("TF_CONFIG")
    if not text:
        raise UserError("--distribute multi-worker needs the TF_CONFIG environment variable "
                        "(the cluster's addresses and this task's place in it; README, "
                        "'One GPU, several GPUs and machines'); set it, or use "
                        "--distribute mirrored on one machine.")
    try:
        tf_config = json.loads(text)
        cluster, task = tf_config["cluster"], tf_config["task"]
        task_type, index = task["type"], task["index"]
        if not isinstance(cluster, dict) or not isinstance(index, int):
            raise TypeError("cluster must be an object and the task index an integer")
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"TF_CONFIG is not a cluster description ({error}); it must look "
                        'like {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                        '"task": {"type": "worker", "index": 0}}.') from None
    jobs = {job: cluster.get(job) or [] for job in JOBS}
    if isinstance(index, bool) or not all(
            isinstance(addresses, list) and all(isinstance(a, str) for a in addresses)
            for addresses in jobs.values()):
        raise UserError('TF_CONFIG is not a cluster description (each job must list '
                        '"host:port" addresses, and the task index be an integer); it must '
                        'look like {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                        '"task": {"type": "worker", "index": 0}}.')
    others = sorted(set(cluster) - set(JOBS))
    if others or task_type not in JOBS or not 0 <= index < len(jobs[task_type]):
        problem = (f"it names jobs {', '.join(others)}, of which this program has no use"
                   if others else f"its task is {task_type!r} {index}, which its cluster "
                   "does not hold")
        raise UserError(f"TF_CONFIG describes no cluster of chief and worker tasks that "
                        f"this task belongs to ({problem}).")
    if len(jobs["chief"]) > 1:
        raise UserError(f"TF_CONFIG names {len(jobs['chief'])} chiefs; a cluster has at "
                        "most one (or none, and worker 0 leads).")
    # The chief, or worker 0 of a cluster without one, is worker number 0.
    worker = index if task_type == "chief" else index + len(jobs["chief"])
    return jobs, task_type, index, worker, len(jobs["chief"]) + len(jobs["worker"])


def create(config, note=lambda *_: None):
    """The `Distribution` of `config.distribute`; call it before any other TensorFlow call.
    `note` prints a start-up note (that a multi-worker run waits for its workers)."""
    import tensorflow as tf

    if config.distribute == "none":
        return Distribution(tf.distribute.get_strategy(), "none", 1)
    if config.distribute == "mirrored":
        devices = _local_devices(tf, config.devices)
        strategy = tf.distribute.MirroredStrategy(devices)
        return Distribution(strategy, "mirrored", strategy.num_replicas_in_sync,
                            devices=tuple(devices))
    jobs, task_type, index, worker, workers = read_tf_config()
    note(f"Joining the cluster of TF_CONFIG as {task_type} {index} (worker {worker} of "
         f"{workers}); waiting up to {REGISTER_TIMEOUT_SECONDS // 60} minutes for every "
         "worker to start.")
    _configure_coordination(tf, jobs)
    # Joining blocks until every task of TF_CONFIG has started; a worker that never does
    # (a wrong address, a command refused before TensorFlow started) must not leave the
    # others waiting without a word. TensorFlow blocks without letting Python threads or
    # signal handlers run, so the watch is a small process of its own.
    addresses = ", ".join(address for job in JOBS for address in jobs[job])
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(REGISTER_TIMEOUT_SECONDS),
         f"main.py: error: as {task_type} {index}, waited {REGISTER_TIMEOUT_SECONDS // 60} "
         f"minutes for the other workers of TF_CONFIG ({addresses}) to start; start every "
         "worker with the same command, and check the addresses and ports."],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (ValueError, tf.errors.OpError) as error:
        raise UserError(f"cannot join the cluster of TF_CONFIG as {task_type} {index} "
                        f"({failure_message(error)}); start every worker it names, with "
                        "the same command, and check their addresses and ports.") from None
    finally:
        watchdog.kill()
        watchdog.wait()
    global joined_cluster
    joined_cluster = True
    devices = tuple(strategy.extended.worker_devices)
    return Distribution(strategy, "multi-worker", strategy.num_replicas_in_sync,
                        workers=workers, worker=worker, devices=devices)


# The watch over joining: after argv[2] seconds it writes argv[3] to standard error and
# kills process argv[1]; it ends by itself once that process is gone.
_WATCHDOG = """
import os, sys, time
parent, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    time.sleep(0.5)
    if os.getppid() != parent:
        sys.exit(0)
sys.stderr.write(message + "\\n")
sys.stderr.flush()
os.kill(parent, 9)
"""


def _local_devices(tf, text):
    """The device names MirroredStrategy is given: --devices, or every GPU, else the CPU."""
    if text is None:
        gpus = tf.config.list_physical_devices("GPU")
        return [f"/gpu:{index}" for index in range(len(gpus))] or ["/cpu:0"]
    devices = settings.parse_devices(text)
    kind = devices[0][0]
    wanted = max(index for _, index in devices) + 1
    if kind == "GPU":
        found = len(tf.config.list_physical_devices("GPU"))
        if wanted > found:
            raise UserError(f"--devices names GPU:{wanted - 1}, but TensorFlow sees "
                            f"{_count(found, 'GPU')} here.")
    elif wanted > 1:
        # One physical CPU split into logical devices, each a replica (possible only
        # before TensorFlow starts its runtime, hence a strategy made first).
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * wanted)
        except RuntimeError:
            if len(tf.config.list_logical_devices("CPU")) < wanted:
                raise UserError(f"--devices needs {wanted} logical CPUs, but TensorFlow has "
                                "already started with fewer in this process.") from None
    return [f"/{kind.lower()}:{index}" for _, index in devices]


def _configure_coordination(tf, jobs):
    """Start TensorFlow's coordination service with a shorter heartbeat limit than its
    default (the strategy keeps a service configured before it). An internal API: where it
    has changed, the strategy's own configuration applies."""
    try:
        from tensorflow.core.protobuf import coordination_config_pb2
        from tensorflow.python.eager import context

        leader = ("/job:chief/replica:0/task:0" if jobs["chief"]
                  else "/job:worker/replica:0/task:0")
        context.context().configure_coordination_service(
            service_type="standalone", service_leader=leader,
            heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT_SECONDS * 1000,
            shutdown_barrier_timeout_in_ms=SHUTDOWN_BARRIER_SECONDS * 1000,
            coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job,
                                                                     num_tasks=len(jobs[job]))
                              for job in JOBS if jobs[job]])
    except (ImportError, AttributeError, TypeError):
        pass


def leave(code):
    """`code`, to return from main; but a worker of a cluster that ends on an error exits
    at once. Every write is finished by then, and TensorFlow's shutdown would wait at a
    barrier (up to SHUTDOWN_BARRIER_SECONDS) for workers that are gone or still training,
    which then wait for this one."""
    if joined_cluster and code != 0:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def failure_message(error):
    """A TensorFlow error of a collective, as the one-line phrase `WorkerFailed` carries:
    its type, the first line that says what happened (not where), and the tasks named."""
    message = getattr(error, "message", None) or str(error)
    # Without TensorFlow's names of the failing function, which say nothing to a user.
    lines = [re.sub(r"\{\{[^}]*\}\}\s*", "", line).strip() for line in message.splitlines()]
    lines = [line for line in lines if line]
    said = next((line for line in lines if not line.startswith(
        ("Graph execution error", "Detected at node", "File ", "[["))), "")
    tasks = sorted(set(re.findall(r"/job:(chief|worker)/replica:\d+/task:(\d+)", message)))
    named = "; ".join(f"{job} {index}" for job, index in tasks)
    return (f"{type(error).__name__}: {said[:200]}" + (f" [{named}]" if named else "")).strip()


def replica_slice(total):
    """(start, end) of this replica's part of a global batch of `total` examples, inside
    `strategy.run`: consecutive slices in replica order, sizes differing by at most one,
    so that the replicas together hold the batch in its order. With one replica it is the
    whole batch."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
    count = context.num_replicas_in_sync
    total = tf.cast(total, tf.int64)
    return total * replica // count, total * (replica + 1) // count


def share_from_chief(distribution, arrays):
    """The chief's `arrays` (a list of NumPy arrays, the same shapes and dtypes on every
    worker) on every worker; each worker passes its own, which only the chief's count.

    Sent as their bit patterns in one all-reduce of integers, where the chief adds its
    values to the others' zeros: integer addition of zero is exact, so every worker ends
    with the chief's bits (a float sum would turn -0.0 into 0.0).
    """
    import tensorflow as tf

    if distribution.workers == 1:
        return arrays
    parts = [np.ascontiguousarray(array).view(np.uint8).ravel() for array in arrays]
    packed = np.concatenate(parts + [np.zeros((-sum(map(len, parts))) % 4, np.uint8)])
    contribution = packed.view(np.int32) if distribution.is_chief else np.zeros(
        len(packed) // 4, np.int32)
    strategy = distribution.strategy

    @tf.function
    def share(values):
        def replica(values):
            context = tf.distribute.get_replica_context()
            first = tf.equal(context.replica_id_in_sync_group, 0)
            return context.all_reduce(tf.distribute.ReduceOp.SUM,
                                      tf.where(first, values, tf.zeros_like(values)))

        return strategy.experimental_local_results(strategy.run(replica, args=(values,)))[0]

    shared = share(tf.constant(contribution)).numpy().view(np.uint8)
    result, start = [], 0
    for array, part in zip(arrays, parts):
        result.append(shared[start:start + len(part)].view(array.dtype).reshape(array.shape))
        start += len(part)
    return result


def sum_over_replicas(distribution, values):
    """The sum over every replica of all workers of each worker's int32 `values` (a NumPy
    vector), on every worker: with the same number of replicas per worker, a worker's
    contribution counts that many times."""
    import tensorflow as tf

    strategy = distribution.strategy

    @tf.function
    def add(values):
        def replica(values):
            # identity: a value made on the replica's device (the all-reduce of the input
            # tensor itself finds no device to send to).
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                                  tf.identity(values))

        return strategy.experimental_local_results(strategy.run(replica, args=(values,)))[0]

    return add(tf.constant(np.asarray(values, np.int32))).numpy()


def digest(value):
    """A 63-bit number that identifies the JSON of `value`, for comparing workers' settings."""
    text = json.dumps(value, sort_keys=True).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1
