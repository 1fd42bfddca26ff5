"""One epoch of training, validation and test: compiled steps that return numbers, never print.

Each evaluation starts from zeroed sums (the original project's test accuracy was a
running mean over all epochs because one metric was never reset), and the confusion
matrix is a pure function of labels and predictions.
"""

import math

import keras
import numpy as np
import tensorflow as tf

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
    """Compiled (tf.function) train and evaluation steps for one `TrainState`.

    `make_batch(indices, seed, augment)` turns a batch of training-set indices into
    (images, labels) inside the compiled step (see `dataset_utils.MnistData.make_batch`),
    so the training data never passes through Python or a separate input pipeline.

    With `jit_compile`, XLA compiles the model's part of the training step (forward,
    backward, optimizer and weight-average updates) and the evaluation step. Batch making
    stays outside XLA: its augmentation kernel (ImageProjectiveTransformV3) has no XLA
    implementation.
    """

    def __init__(self, state, make_batch, jit_compile=False):
        self.state = state
        self.make_batch = make_batch
        self.scales_loss = isinstance(state.optimizer, keras.optimizers.LossScaleOptimizer)
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

    def _train_step(self, indices, seed, augment):
        images, labels = self.make_batch(indices, seed, augment)
        return self.update(images, labels)

    def _update(self, images, labels):
        model, optimizer = self.state.model, self.state.optimizer
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss_sum = self.loss_fn(labels, logits)
            mean_loss = loss_sum / tf.cast(tf.shape(labels)[0], loss_sum.dtype)
            if self.scales_loss:
                mean_loss = optimizer.scale_loss(mean_loss)
        variables = model.trainable_variables
        # A LossScaleOptimizer divides the gradients by its scale before applying them.
        gradients = tape.gradient(mean_loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))
        if self.state.average is not None:
            self.state.average.update()
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, axis=-1), labels), tf.float32)
        )
        return tf.stack([loss_sum, correct, tf.cast(tf.shape(labels)[0], tf.float32)])

    def _eval_step(self, images, labels):
        logits = self.state.model(images, training=False)
        # The probability the model gives its prediction: what ranks its mistakes.
        confidence = tf.reduce_max(tf.nn.softmax(logits), axis=-1)
        return self.loss_fn(labels, logits), tf.argmax(logits, axis=-1), confidence


def resetter():
    """Fresh running sums (loss, correct, count) for one pass over a split (float64)."""
    return np.zeros(3)


def go_train(steps, batches, sums=None, after_step=None, num_classes=10):
    """Train over `batches` (the rest of one epoch); returns {'loss', 'accuracy'}.

    `batches` yields (indices, augmentation seed, augment) triples, as
    `MnistData.train_batches` gives them. Loss and accuracy are measured on the training
    batches as the model saw them (augmented or not), in training mode (dropout on).
    `sums` are the running (loss sum, correct, count) of the epoch's batches trained
    before (a resumed epoch); `after_step(sums)` runs after every step with the running
    sums (the loop checkpoints from it). A step whose loss is not finite or far above
    guessing raises `Diverged` before `after_step` sees it.
    """
    sums = resetter() if sums is None else np.array(sums, dtype=np.float64)
    for batch in batches:
        # Reading the step's numbers back waits for it to finish, so a checkpoint written
        # after it holds exactly the state that produced them.
        step_sums = steps.train_step(*batch).numpy()
        batch_loss = float(step_sums[0] / step_sums[2])
        if diverged(batch_loss, num_classes):
            raise Diverged(f"its training loss was {batch_loss:.4g}")
        sums += step_sums
        if after_step is not None:
            after_step(sums)
    loss_sum, correct, count = (float(value) for value in sums)
    return {"loss": loss_sum / count, "accuracy": correct / count}


def evaluate(steps, dataset, num_classes=10):
    """Loss, accuracy and confusion matrix of the whole split `dataset` (batches of float
    images and labels, in inference mode), with every example's `labels`, `predictions`
    and `confidences` (the probability of the predicted class), in the split's order."""
    loss_sum = 0.0
    all_labels, all_predictions, all_confidences = [], [], []
    for images, labels in dataset:
        batch_loss, predictions, confidences = steps.eval_step(images, labels)
        loss_sum += float(batch_loss)
        all_labels.append(labels.numpy())
        all_predictions.append(predictions.numpy())
        all_confidences.append(confidences.numpy())
    labels, predictions = np.concatenate(all_labels), np.concatenate(all_predictions)
    metrics = get_classification_metrics(labels, predictions, num_classes)
    metrics.update(loss=loss_sum / len(labels), labels=labels, predictions=predictions,
                   confidences=np.concatenate(all_confidences))
    return metrics


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
