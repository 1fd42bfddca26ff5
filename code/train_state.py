"""The training state: everything training changes and a resume restores, in one object.

`TrainState` holds the network, the optimizer (with its step counter, which drives the
learning-rate schedule, and in mixed precision its loss scale), the weight average, and
the position in the run: the epoch under way, the steps of it done, their running sums
and training time, and the rows of the epochs completed. The loop passes it around;
`cp_utils` writes and restores it whole, each variable under its name
(`TrainState.named_variables`).
"""

import contextlib
import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

import model as model_module
import settings
from basic_utils import Diverged


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle learning rate: a linear rise to `peak`, then a cosine fall to almost zero.

    Over `total_steps`: the first `warmup_fraction` of the steps rise from
    `start_fraction * peak` to `peak`; the rest follow half a cosine down to
    `end_fraction * peak`, which is kept after `total_steps`. Warming up lets batch
    normalisation and Adam's moment estimates settle before the largest steps; ending near
    zero lets the weights settle. The rate is a pure function of the step count, so a
    resumed run continues the curve.
    """

    def __init__(self, peak, total_steps, warmup_fraction=0.2, start_fraction=0.1,
                 end_fraction=1e-3):
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_fraction = float(warmup_fraction)
        self.start_fraction = float(start_fraction)
        self.end_fraction = float(end_fraction)
        self.warmup_steps = max(1, round(self.warmup_fraction * self.total_steps))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        rising = self.peak * (
            self.start_fraction + (1.0 - self.start_fraction) * step / self.warmup_steps
        )
        progress = tf.clip_by_value(
            (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps), 0.0, 1.0
        )
        falling = self.peak * (
            self.end_fraction
            + (1.0 - self.end_fraction) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        )
        return tf.where(step < self.warmup_steps, rising, falling)

    def get_config(self):
        return {
            "peak": self.peak, "total_steps": self.total_steps,
            "warmup_fraction": self.warmup_fraction, "start_fraction": self.start_fraction,
            "end_fraction": self.end_fraction,
        }


def make_optimizer(config, steps_per_epoch):
    """The optimizer of `config` (precision resolved): Adam or plain SGD, one-cycle or
    constant learning rate.

    The one-cycle schedule spans `config.epochs` epochs; extending a finished run therefore
    re-plans the remaining schedule over the new length. In mixed precision the optimizer
    is wrapped in Keras' `LossScaleOptimizer`: the loss is multiplied by a scale (starting
    at 2^15) before differentiation so that small float16 gradients do not round to zero;
    a step whose gradients overflow is skipped and halves the scale, and 2,000 steps
    without overflow double it. The scale is one of its variables, so checkpoints hold it.
    """
    rate = (OneCycle(config.learning_rate, config.epochs * steps_per_epoch)
            if config.schedule == "one-cycle" else config.learning_rate)
    # An explicit name: Keras numbers the names it makes up per process (adam, adam_1, ...),
    # and the optimizer's variables' names start with it.
    optimizer_class = getattr(keras.optimizers, settings.OPTIMIZERS[config.optimizer])
    optimizer = optimizer_class(learning_rate=rate, name=config.optimizer)
    if config.precision == "mixed":
        return keras.optimizers.LossScaleOptimizer(optimizer, name="loss_scale_optimizer")
    if config.precision != "float32":
        raise ValueError(f"precision must be resolved to float32 or mixed, got "
                         f"{config.precision!r}")
    return optimizer


class WeightAverage:
    """An exponential moving average of a model's weights, which evaluation uses.

    After every training step each trainable variable of the model (the weights, including
    batch norm's scale and offset) pulls its shadow copy towards itself:

        shadow <- d * shadow + (1 - d) * variable,    d = min(decay, (1 + n) / (10 + n))

    with n the number of updates, this one included. The warm-up term lets the average
    follow the fast early training instead of leaning on the random initial weights: it
    spans about the last ninth of the steps taken until d reaches `decay`. Averaging
    smooths out the step-to-step noise of the weights.

    Batch norm's moving statistics are not averaged: evaluation uses the model's own, which
    follow the images the last few dozen steps saw. After the switch to unaugmented images
    (`--clean-epochs`) they describe clean digits, as the test images are; an average of
    them would still carry the statistics of augmented ones.
    """

    def __init__(self, model, decay):
        self.decay = float(decay)
        self.targets = list(model.trainable_variables)
        with tf.init_scope():
            self.shadows = [tf.Variable(variable.value, trainable=False)
                            for variable in self.targets]
            self.count = tf.Variable(0, dtype=tf.int64, trainable=False)

    def update(self):
        """One averaging step (called inside the compiled training step)."""
        n = tf.cast(self.count.assign_add(1), tf.float32)
        d = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))
        for shadow, variable in zip(self.shadows, self.targets):
            shadow.assign(d * shadow + (1.0 - d) * variable.value)

    @contextlib.contextmanager
    def applied(self):
        """Inside the block the model holds the averaged weights; the raw ones come back
        exactly (bit for bit) afterwards, also when the block raises."""
        raw = [variable.numpy() for variable in self.targets]
        for variable, shadow in zip(self.targets, self.shadows):
            variable.assign(shadow)
        try:
            yield
        finally:
            for variable, value in zip(self.targets, raw):
                variable.assign(value)


def make_weight_average(config, model):
    """The `WeightAverage` of `config` for `model`, or None when it is turned off."""
    return WeightAverage(model, config.weight_average) if config.weight_average else None


@dataclasses.dataclass
class TrainState:
    """Everything a resume needs, and nothing else.

    `epoch` is the epoch under way (1-based) and `step` the number of its batches done;
    `train_sums` are their running (loss sum, correct, count) in float64 and `seconds`
    their training time, so that a resumed epoch reports its numbers and time whole.
    `history` holds one row per completed epoch (what metrics.csv shows).
    """

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    average: WeightAverage | None
    epoch: int = 1
    step: int = 0
    train_sums: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    seconds: float = 0.0
    history: list = dataclasses.field(default_factory=list)

    def evaluation_weights(self):
        """A context in which the model holds the weights to evaluate: the averaged ones
        when the run keeps a weight average, else the raw ones as they are."""
        return self.average.applied() if self.average else contextlib.nullcontext()

    def finish_epoch(self, row):
        """Record the completed epoch's `row` and move to the start of the next epoch."""
        self.history = self.history + [row]
        self.epoch += 1
        self.step = 0
        self.train_sums = np.zeros(3)
        self.seconds = 0.0

    def check_finite(self):
        """Raise `Diverged` if a variable holds NaN or infinity: such a state is never saved."""
        for name, variable in self.named_variables().items():
            value = np.asarray(variable.numpy())
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise Diverged(f"{name} holds NaN or infinity")

    def named_variables(self):
        """{name: variable} of every variable of the model, optimizer and weight average.

        Names: "model/<model>/<layer>/<variable>" (Keras' own `path` for every variable
        but the dropout layer's random-generator state, which Keras keeps outside the
        model's path under a per-process number); "optimizer/<path>" (the optimizer's
        names, which include the model variable each slot belongs to); "average/<the
        model variable's name>" for each averaged copy, and "average/count".
        """
        named = {}
        for layer in self.model.layers:
            for variable in layer.variables:
                named[f"model/{self.model.name}/{layer.name}/{variable.name}"] = variable
        for variable in self.optimizer.variables:
            named[f"optimizer/{variable.path}"] = variable
        if self.average is not None:
            names = {id(variable): name[len("model/"):] for name, variable in named.items()}
            for target, shadow in zip(self.average.targets, self.average.shadows):
                named[f"average/{names[id(target)]}"] = shadow
            named["average/count"] = self.average.count
        expected = (len(self.model.variables) + len(self.optimizer.variables)
                    + (len(self.average.shadows) + 1 if self.average else 0))
        if len(named) != expected:
            # Two variables under one name, or one that no layer lists: a network this
            # naming does not cover. Better to stop than to checkpoint part of the state.
            raise RuntimeError(f"{len(named)} names for {expected} variables of the state")
        return named


def create_train_state(config, num_classes, steps_per_epoch, strategy=None):
    """A fresh `TrainState` for `config` (precision resolved): the network with its
    initial weights, the optimizer built for it, and the weight average if one is kept,
    all created in the scope of the tf.distribute `strategy` when one is given (their
    variables are then mirrored on its replicas).

    The optimizer is built here, eagerly: unbuilt, a LossScaleOptimizer's `scale_loss`
    multiplies by a Python constant, which a compiled step would keep for ever, and
    building it inside a traced step fails under a strategy (keras-team/keras#23085).
    """
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        network = model_module.build_model(config.model, num_classes=num_classes,
                                           precision=config.precision)
        optimizer = make_optimizer(config, steps_per_epoch)
        optimizer.build(network.trainable_variables)
        return TrainState(network, optimizer, make_weight_average(config, network))
