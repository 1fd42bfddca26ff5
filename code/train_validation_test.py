"""One epoch of training, validation and test: compiled steps that return numbers, never print.

Each evaluation starts from zeroed sums (the original project's test accuracy was a
running mean over all epochs because one metric was never reset), and the confusion
matrix is a pure function of labels and predictions.
"""

import math
import signal

import keras
import numpy as np
import tensorflow as tf

import distribution
from basic_utils import Diverged


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


# A training loss this many times what guessing scores (the cross-entropy of a uniform
# guess, ln 10 for ten classes) means the run has diverged: no network that learns comes
# near it, while a learning rate far too large gets there within a few steps.
DIVERGED_FACTOR = 100


def diverged(loss, num_classes):
    """Whether a mean cross-entropy `loss` is not finite or far above guessing."""
    return not loss <= DIVERGED_FACTOR * math.log(num_classes)  # NaN fails the comparison


class Steps:
    """Compiled (tf.function) train and evaluation steps for one `TrainState`, written
    once for every distribution strategy.

    `make_batch(indices, seed, augment, rows)` turns a batch of training-set indices into
    (images, labels) inside the compiled step (see `dataset_utils.MnistData.make_batch`),
    so the training data never passes through Python or a separate input pipeline.

    Each step runs through `strategy.run` (TensorFlow's default strategy when the run is
    not distributed, which calls it once on the one device). A step is given a global
    batch; each replica computes on its slice (`distribution.replica_slice`), and the
    slices' sums (loss, correct, count; the confusion matrix) are added across replicas,
    so every number a step returns is the whole batch's. The loss each replica
    differentiates is its sum divided by the global batch size, and the optimizer adds
    the replicas' gradients: the update is the global batch's mean gradient, whatever the
    replica count.

    With `jit_compile`, XLA compiles the model's part of the training step (forward,
    backward, optimizer and weight-average updates) and the evaluation step. Batch making
    stays outside XLA: its augmentation kernel (ImageProjectiveTransformV3) has no XLA
    implementation. (A distributed step cannot be compiled; settings refuses the pair.)
    """

    def __init__(self, state, make_batch, jit_compile=False, strategy=None):
        self.state = state
        self.make_batch = make_batch
        self.strategy = strategy or tf.distribute.get_strategy()
        self.scales_loss = isinstance(state.optimizer, keras.optimizers.LossScaleOptimizer)
        # Sum over the batch; the caller divides by the number of examples so that a
        # short last batch weighs what it should.
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="sum"
        )
        self.num_classes = int(state.model.num_classes)
        # One trace for every batch size: the short last batch of an epoch reuses the
        # compiled step instead of tracing a second one.
        self._compiled_train_step = tf.function(self._train_step, input_signature=[
            tf.TensorSpec([None], tf.int64), tf.TensorSpec([2], tf.int64),
            tf.TensorSpec([], tf.bool), tf.TensorSpec([len(STOP_SIGNALS)], tf.float32)])
        self.update = (tf.function(self._update, jit_compile=True) if jit_compile
                       else self._update)
        self.eval_step = tf.function(self._eval_step, reduce_retracing=True)
        self.predict = (tf.function(self._predict, jit_compile=True) if jit_compile
                        else self._predict)
        self.agree_to_stop = tf.function(self._agree_to_stop, input_signature=[
            tf.TensorSpec([len(STOP_SIGNALS)], tf.float32)])

    def train_step(self, indices, seed, augment, stop=None):
        """One training step on the global batch `indices` (see `_train_step`); `stop`
        is this worker's `stop_flags` (default: no signal)."""
        return self._compiled_train_step(indices, seed, augment,
                                         stop_flags(None) if stop is None else stop)

    def _sum(self, per_replica):
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _train_step(self, indices, seed, augment, stop):
        """(loss sum, correct, count, then one count per STOP_SIGNALS of the replicas
        whose worker received it) of one global batch."""
        return self._sum(self.strategy.run(self._replica_train_step,
                                           args=(indices, seed, augment, stop)))

    def _replica_train_step(self, indices, seed, augment, stop):
        total = tf.shape(indices, out_type=tf.int64)[0]
        start, end = distribution.replica_slice(total)
        images, labels = self.make_batch(indices[start:end], seed, augment, (start, total))
        return tf.concat([self.update(images, labels, total), stop], axis=0)

    def _update(self, images, labels, global_count=None):
        """Train on one replica's (images, labels) of a global batch of `global_count`
        examples (default: this batch is the whole one); returns its (loss sum, correct,
        count)."""
        model, optimizer = self.state.model, self.state.optimizer
        if global_count is None:
            global_count = tf.shape(labels)[0]
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss_sum = self.loss_fn(labels, logits)
            mean_loss = loss_sum / tf.cast(global_count, loss_sum.dtype)
            if self.scales_loss:
                mean_loss = optimizer.scale_loss(mean_loss)
        variables = model.trainable_variables
        # A LossScaleOptimizer divides the gradients by its scale before applying them;
        # under a strategy the optimizer adds the replicas' gradients before applying.
        gradients = tape.gradient(mean_loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))
        if self.state.average is not None:
            self.state.average.update()
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, axis=-1), labels), tf.float32)
        )
        return tf.stack([loss_sum, correct, tf.cast(tf.shape(labels)[0], tf.float32)])

    def _eval_step(self, images, labels):
        """(loss sum, confusion matrix, predictions, confidences) of one global batch: the
        sums added across replicas, the per-example values gathered in batch order."""
        per_replica = self.strategy.run(self._replica_eval_step, args=(images, labels))
        loss_sum, matrix, predictions, confidences = per_replica
        return (self._sum(loss_sum), self._sum(matrix),
                self.strategy.gather(predictions, axis=0),
                self.strategy.gather(confidences, axis=0))

    def _replica_eval_step(self, images, labels):
        start, end = distribution.replica_slice(tf.shape(labels, out_type=tf.int64)[0])
        labels = labels[start:end]
        loss_sum, predictions, confidence = self.predict(images[start:end], labels)
        matrix = tf.math.confusion_matrix(labels, predictions, num_classes=self.num_classes,
                                          dtype=tf.int64)
        return loss_sum, matrix, predictions, confidence

    def _predict(self, images, labels):
        logits = self.state.model(images, training=False)
        # The probability the model gives its prediction: what ranks its mistakes.
        confidence = tf.reduce_max(tf.nn.softmax(logits), axis=-1)
        return self.loss_fn(labels, logits), tf.argmax(logits, axis=-1), confidence

    def _agree_to_stop(self, stop):
        """The STOP_SIGNALS counts of all replicas: how every worker learns, at the same
        point, that one of them received a signal."""
        return self._sum(self.strategy.run(tf.identity, args=(stop,)))


# The signals a run stops on, in the order the steps count them.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_flags(received):
    """The steps' input for a worker that received signal `received` (None: none)."""
    return np.array([float(received == number) for number in STOP_SIGNALS], np.float32)


def agreed_signal(counts):
    """The signal the replicas' summed STOP_SIGNALS `counts` ask to stop on, or None;
    SIGTERM (a launcher's stop) before SIGINT when both arrived."""
    for number, count in sorted(zip(STOP_SIGNALS, counts), reverse=True):
        if count > 0:
            return number
    return None


def resetter():
    """Fresh running sums (loss, correct, count) for one pass over a split (float64)."""
    return np.zeros(3)


def go_train(steps, batches, sums=None, after_step=None, num_classes=10, stop=None):
    """Train over `batches` (the rest of one epoch); returns {'loss', 'accuracy'}.

    `batches` yields (indices, augmentation seed, augment) triples, as
    `MnistData.train_batches` gives them. Loss and accuracy are measured on the training
    batches as the model saw them (augmented or not), in training mode (dropout on).
    `sums` are the running (loss sum, correct, count) of the epoch's batches trained
    before (a resumed epoch); `after_step(sums, signal)` runs after every step with the
    running sums and the signal the workers agreed to stop on in that step (None: go on;
    the loop checkpoints from it). `stop()` gives this worker's signal received so far,
    which every step carries to all replicas. A step whose loss is not finite or far
    above guessing raises `Diverged` before `after_step` sees it.
    """
    sums = resetter() if sums is None else np.array(sums, dtype=np.float64)
    for batch in batches:
        # Reading the step's numbers back waits for it to finish, so a checkpoint written
        # after it holds exactly the state that produced them.
        step_sums = steps.train_step(*batch, stop_flags(stop() if stop else None)).numpy()
        batch_loss = float(step_sums[0] / step_sums[2])
        if diverged(batch_loss, num_classes):
            raise Diverged(f"its training loss was {batch_loss:.4g}")
        sums += step_sums[:3]
        if after_step is not None:
            after_step(sums, agreed_signal(step_sums[3:]))
    loss_sum, correct, count = (float(value) for value in sums)
    return {"loss": loss_sum / count, "accuracy": correct / count}


def evaluate(steps, dataset, num_classes=10):
    """Loss, accuracy and confusion matrix of the whole split `dataset` (batches of float
    images and labels, in inference mode), with every example's `labels`, `predictions`
    and `confidences` (the probability of the predicted class), in the split's order.

    The matrix is the steps' sum over replicas and batches; the accuracy is its trace
    over its total."""
    loss_sum = 0.0
    matrix = np.zeros((num_classes, num_classes), np.int64)
    all_labels, all_predictions, all_confidences = [], [], []
    for images, labels in dataset:
        batch_loss, batch_matrix, predictions, confidences = steps.eval_step(images, labels)
        loss_sum += float(batch_loss)
        matrix += batch_matrix.numpy()
        all_labels.append(labels.numpy())
        all_predictions.append(predictions.numpy())
        all_confidences.append(confidences.numpy())
    count = int(matrix.sum())
    return {"accuracy": float(np.trace(matrix) / count) if count else float("nan"),
            "confusion_matrix": matrix, "loss": loss_sum / count,
            "labels": np.concatenate(all_labels),
            "predictions": np.concatenate(all_predictions),
            "confidences": np.concatenate(all_confidences)}


def go_validation(steps, dataset, num_classes=10):
    """Validation loss, accuracy, confusion matrix and per-example predictions (`evaluate`)."""
    return evaluate(steps, dataset, num_classes)


def go_test(steps, dataset, num_classes=10):
    """This epoch's test loss and accuracy, computed afresh (inference mode)."""
    metrics = evaluate(steps, dataset, num_classes)
    return {"loss": metrics["loss"], "accuracy": metrics["accuracy"]}


def per_class_metrics(confusion_matrix, class_names):
    """Precision, recall, F1 and support of each class, from a whole split's confusion
    matrix (rows: true class, columns: predicted), as a list of dicts in class order.

    Precision is undefined (None) for a class never predicted, recall for a class that
    never occurs, and F1 when either is undefined or both are zero; a number is never
    made up for them.
    """
    matrix = np.asarray(confusion_matrix, dtype=np.int64)
    rows = []
    for index, name in enumerate(class_names):
        correct = int(matrix[index, index])
        predicted, support = int(matrix[:, index].sum()), int(matrix[index, :].sum())
        precision = correct / predicted if predicted else None
        recall = correct / support if support else None
        f1 = (2 * precision * recall / (precision + recall)
              if precision is not None and recall is not None and precision + recall > 0
              else None)
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1,
                     "support": support})
    return rows


def most_confused_pairs(confusion_matrix, class_names, limit=10):
    """The `limit` most frequent mistakes of a confusion matrix as dicts {"true",
    "predicted", "count"}, largest count first (ties in class order); never a pair with
    no mistakes."""
    matrix = np.asarray(confusion_matrix, dtype=np.int64)
    pairs = [(-int(matrix[true, predicted]), true, predicted)
             for true in range(len(class_names)) for predicted in range(len(class_names))
             if true != predicted and matrix[true, predicted] > 0]
    return [{"true": class_names[true], "predicted": class_names[predicted], "count": -count}
            for count, true, predicted in sorted(pairs)[:limit]]


def most_confident_mistakes(labels, predictions, confidences, limit=36):
    """Indices of up to `limit` wrongly predicted examples, the most confident first
    (ties in split order)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    wrong = np.flatnonzero(labels != predictions)
    order = np.argsort(-np.asarray(confidences)[wrong], kind="stable")
    return wrong[order[:limit]]
