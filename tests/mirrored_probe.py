"""Run by tests/test_distribute.py as its own process: logical CPU devices can only be made
before TensorFlow starts, so this cannot run inside the test process.

Splits the CPU into two logical devices, trains under MirroredStrategy, and prints one
JSON object: the largest difference between the two replicas' copies of every variable
(batch-norm moving statistics included), and for a network without batch norm and
dropout (--model seed) the largest difference between the two-replica run and the same
steps on one device, with the largest weight it saw.
"""

import dataclasses
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "code"))

import basic_utils  # noqa: E402

basic_utils.set_tensorflow_environment(log_level="3")

import distribution  # noqa: E402
import settings  # noqa: E402


def main(steps):
    config = settings.make_config("standard", distribute="mirrored", devices="CPU:0,CPU:1",
                                  batch_size=63, epochs=2, clean_epochs=0,
                                  precision="float32")
    cluster = distribution.create(config)  # before any other TensorFlow call
    import numpy as np

    import dataset_utils
    import helpers
    import train_state
    import train_validation_test

    images, labels = helpers.synthetic_digits(400, seed=1)
    images, labels = images[..., None], labels.astype(np.int64)
    raw = dataset_utils.RawData(images, labels, images[:100], labels[:100], "test:probe",
                                "probe digits")
    result = {"replicas": cluster.replicas}

    def train(config, strategy, replicas):
        data = dataset_utils.load_processing_mnist(config, raw=raw, announce=lambda *_: None,
                                                   replicas=replicas)
        basic_utils.set_global_seed(config.seed)
        state = train_state.create_train_state(config, 10, data.steps_per_epoch,
                                               strategy=strategy)
        runner = train_validation_test.Steps(state, data.make_batch, strategy=strategy)
        batches = list(data.train_batches(1))[:steps]
        train_validation_test.go_train(runner, batches)
        metrics = train_validation_test.evaluate(runner, data.validation_batches())
        return state, metrics

    # The standard network (batch norm, dropout, augmentation, weight average) on two
    # replicas: every variable's two copies must hold the same values.
    state, _ = train(config, cluster.strategy, cluster.replicas)
    def replica_copies(variable):
        # A Keras variable keeps the TensorFlow variable (here a MirroredVariable, one
        # component per replica) as `_value`; the weight average's are TensorFlow's own.
        mirrored = getattr(variable, "_value", variable)
        return [np.asarray(component.numpy()) for component in mirrored.values]

    spread, copies = {}, {}
    for name, variable in state.named_variables().items():
        values = replica_copies(variable)
        copies[name] = len(values)
        spread[name] = max(float(np.max(np.abs(value.astype(np.float64) - values[0])))
                           for value in values)
    result["copies"] = copies
    result["replica_spread"] = spread
    # Mixed precision under the strategy: the loss scale is one more variable to agree on.
    mixed, _ = train(dataclasses.replace(config, precision="mixed"), cluster.strategy,
                     cluster.replicas)
    result["mixed_spread"] = {
        name: max(float(np.max(np.abs(value.astype(np.float64) - values[0])))
                  for value in values)
        for name, values in ((name, replica_copies(variable))
                             for name, variable in mixed.named_variables().items())}

    # --model seed: no batch norm, no dropout, no augmentation; two replicas against one.
    seed_config = settings.make_config("seed", batch_size=63, epochs=2, precision="float32")
    two, two_metrics = train(seed_config, cluster.strategy, cluster.replicas)
    one, one_metrics = train(seed_config, None, 1)
    one_vars, two_vars = one.named_variables(), two.named_variables()
    result["seed_max_difference"] = max(
        float(np.max(np.abs(np.asarray(two_vars[name].numpy(), np.float64)
                            - np.asarray(one_vars[name].numpy(), np.float64))))
        for name in one_vars if name.startswith("model/"))
    result["seed_max_weight"] = max(float(np.max(np.abs(one_vars[name].numpy())))
                                    for name in one_vars if name.startswith("model/"))
    result["seed_loss"] = [one_metrics["loss"], two_metrics["loss"]]
    result["seed_matrix_equal"] = bool(np.array_equal(one_metrics["confusion_matrix"],
                                                      two_metrics["confusion_matrix"]))
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
