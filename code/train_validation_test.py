"""One epoch of training, validation and test: compiled steps that return numbers, never print.

Each evaluation starts from zeroed sums (the original project's test accuracy was a
running mean over all epochs because one metric was never reset), and the confusion
matrix is a pure function of labels and predictions.
"""

import contextlib
import math

import keras
import numpy as np
import tensorflow as tf


def get_classification_metrics(labels, predictions, num_classes=10):
    """Accuracy (fraction) and confusion matrix (rows: true class, columns: predicted).

    Pure NumPy on two integer arrays of equal length; the matrix is always
    num_classes x num_classes, even when a class never occurs.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    if labels.shape != predictions.shape:
        raise ValueError(
            f"labels and predictions differ in length: {labels.shape[0]} vs {predictions.shape[0]}"
        )
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must lie in 0..{num_classes - 1}, got {values.min()}..{values.max()}")
    matrix = np.bincount(
        labels * num_classes + predictions, minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    accuracy = float(np.trace(matrix) / labels.size) if labels.size else float("nan")
    return {"accuracy": accuracy, "confusion_matrix": matrix}


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle learning rate: a linear rise to `peak`, then a cosine fall to almost zero.

    Over `total_steps`: the first `warmup_fraction` of the steps rise from
    `start_fraction * peak` to `peak`; the rest follow half a cosine down to
    `end_fraction * peak`, which is kept after `total_steps`. Warming up lets batch
    normalisation and Adam's moment estimates settle before the largest steps; ending near
    zero lets the weights settle.
    The rate is a pure function of the step count, so a resumed run continues the curve.
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
    """The optimizer of `config`: Adam or plain SGD, one-cycle or constant learning rate.

    The one-cycle schedule spans `config.epochs` epochs; extending a finished run therefore
    re-plans the remaining schedule over the new length. In mixed precision the optimizer
    is wrapped in Keras' `LossScaleOptimizer`: the loss is multiplied by a scale (starting
    at 2^15) before differentiation so that small float16 gradients do not round to zero;
    a step whose gradients overflow is skipped and halves the scale, and 2,000 steps
    without overflow double it. Its scale is optimizer state, saved in every checkpoint.
    """
    if config.precision not in ("float32", "mixed"):
        raise ValueError(f"precision must be resolved to float32 or mixed, got {config.precision!r}")
    if config.schedule == "one-cycle":
        rate = OneCycle(config.learning_rate, config.epochs * steps_per_epoch)
    elif config.schedule == "constant":
        rate = config.learning_rate
    else:
        raise ValueError(f"unknown schedule {config.schedule!r}")
    if config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=rate)
    elif config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=rate)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    if config.precision == "mixed":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class WeightAverage:
    """An exponential moving average of a model's weights, which evaluation uses.

    After every training step each trainable variable of the model (the weights, including
    batch norm's scale and offset) pulls its shadow copy towards itself:

        shadow <- d * shadow + (1 - d) * variable,    d = min(decay, (1 + n) / (10 + n))

    with n the number of updates, this one included. The warm-up term lets the average follow the
    fast early training instead of leaning on the random initial weights: it spans about
    the last ninth of the steps taken until d reaches `decay` (0.999, after about 9,000
    steps; the 8,440 steps of the standard preset end at d = 0.9989, a span of about 940
    steps). Averaging smooths out the step-to-step noise of the weights.

    Batch norm's moving statistics are not averaged: evaluation uses the model's own, which
    follow the images the last few dozen steps saw. After the switch to unaugmented images
    (`--clean-epochs`) they describe clean digits, as the test images are; an average of
    them would still carry the statistics of augmented ones.

    Its variables (`variables`) are part of every checkpoint, so a resumed run averages
    exactly as an uninterrupted one.
    """

    def __init__(self, model, decay):
        self.decay = float(decay)
        self.targets = list(model.trainable_variables)
        with tf.init_scope():
            self.shadows = [tf.Variable(variable.value, trainable=False)
                            for variable in self.targets]
            self.count = tf.Variable(0, dtype=tf.int64, trainable=False)

    @property
    def variables(self):
        """What a checkpoint stores: the shadow copies and the update count."""
        return self.shadows + [self.count]

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


class Steps:
    """Compiled (tf.function) train and evaluation steps for one model and optimizer.

    `make_batch(indices, seed, augment)` turns a batch of training-set indices into (images,
    labels) inside the compiled step (see `dataset_utils.MnistData.make_batch`), so the
    training data never passes through Python or a separate input pipeline.

    With `jit_compile`, XLA compiles the model's part of the training step (forward,
    backward, optimizer and weight-average updates) and the evaluation step. Batch making
    stays outside XLA: its augmentation kernel (ImageProjectiveTransformV3) has no XLA
    implementation.
    """

    def __init__(self, model, optimizer, make_batch, average=None, jit_compile=False):
        self.model = model
        self.optimizer = optimizer
        self.make_batch = make_batch
        self.average = average  # a WeightAverage updated after every step, or None
        self.scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        if not optimizer.built:
            # Before it is built, a LossScaleOptimizer's scale_loss multiplies by a Python
            # constant, which the trace would keep forever; built, it reads its variable.
            optimizer.build(model.trainable_variables)
        # Sum over the batch; the caller divides by the number of examples so that a
        # short last batch weighs what it should.
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="sum"
        )
        # One trace for every batch size: the short last batch of an epoch reuses the
        # compiled step instead of tracing a second one.
        self.train_step = tf.function(self._train_step, input_signature=[
            tf.TensorSpec([None], tf.int64), tf.TensorSpec([2], tf.int64),
            tf.TensorSpec([], tf.bool)])
        self.update = (tf.function(self._update, jit_compile=True) if jit_compile
                       else self._update)
        self.eval_step = tf.function(self._eval_step, reduce_retracing=True,
                                     jit_compile=True if jit_compile else None)

    def evaluation_weights(self):
        """A context in which the model holds the weights to evaluate: the averaged ones
        when the run keeps a weight average, else the raw ones as they are."""
        return self.average.applied() if self.average else contextlib.nullcontext()

    def _train_step(self, indices, seed, augment):
        images, labels = self.make_batch(indices, seed, augment)
        return self.update(images, labels)

    def _update(self, images, labels):
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            loss_sum = self.loss_fn(labels, logits)
            mean_loss = loss_sum / tf.cast(tf.shape(labels)[0], loss_sum.dtype)
            if self.scales_loss:
                mean_loss = self.optimizer.scale_loss(mean_loss)
        variables = self.model.trainable_variables
        # A LossScaleOptimizer divides the gradients by its scale before applying them.
        gradients = tape.gradient(mean_loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        if self.average is not None:
            self.average.update()
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, axis=-1), labels), tf.float32)
        )
        return tf.stack([loss_sum, correct, tf.cast(tf.shape(labels)[0], tf.float32)])

    def _eval_step(self, images, labels):
        logits = self.model(images, training=False)
        return self.loss_fn(labels, logits), tf.argmax(logits, axis=-1)


def resetter():
    """Fresh running sums (loss, correct, count) for one pass over a split (float64)."""
    return np.zeros(3)


def go_train(steps, batches, should_stop=None, start_step=0, sums=None, after_step=None):
    """Train over `batches` (the rest of one epoch); returns {'loss', 'accuracy'}.

    `batches` yields (indices, augmentation seed, augment) triples, as
    `MnistData.train_batches` gives them. Loss and accuracy are measured on the training
    batches as the model saw them (augmented or not), in training mode (dropout on).
    `start_step` and `sums` continue an epoch that a mid-epoch checkpoint interrupted;
    `after_step(step, sums)` runs after every step (the loop writes mid-epoch checkpoints
    from it) and `should_stop()` after that.
    """
    sums = resetter() if sums is None else np.array(sums, dtype=np.float64)
    step = start_step
    for batch in batches:
        # Reading the step's numbers back waits for it to finish, so a checkpoint written
        # after it holds exactly the state that produced them.
        sums += steps.train_step(*batch).numpy()
        step += 1
        if after_step is not None:
            after_step(step, sums)
        if should_stop is not None:
            should_stop()
    loss_sum, correct, count = (float(value) for value in sums)
    return {"loss": loss_sum / count, "accuracy": correct / count}


def _evaluate(steps, dataset, num_classes):
    loss_sum = 0.0
    all_labels, all_predictions = [], []
    for images, labels in dataset:
        batch_loss, predictions = steps.eval_step(images, labels)
        loss_sum += float(batch_loss)
        all_labels.append(labels.numpy())
        all_predictions.append(predictions.numpy())
    labels = np.concatenate(all_labels)
    metrics = get_classification_metrics(labels, np.concatenate(all_predictions), num_classes)
    metrics["loss"] = loss_sum / len(labels)
    return metrics


def go_validation(steps, dataset, num_classes=10):
    """Validation loss, accuracy and the 10x10 confusion matrix (inference mode)."""
    return _evaluate(steps, dataset, num_classes)


def go_test(steps, dataset, num_classes=10):
    """This epoch's test loss and accuracy, computed afresh (inference mode)."""
    metrics = _evaluate(steps, dataset, num_classes)
    return {"loss": metrics["loss"], "accuracy": metrics["accuracy"]}
