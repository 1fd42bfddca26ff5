"""One epoch of training, validation and test: compiled steps that return numbers, never print.

Each evaluation starts from zeroed sums (the original project's test accuracy was a
running mean over all epochs because one metric was never reset), and the confusion
matrix is a pure function of labels and predictions.
"""

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


def make_optimizer(learning_rate, lr_decay, steps_per_epoch):
    """Adam whose learning rate decays smoothly by `lr_decay` per epoch.

    The schedule depends only on the step count, not on the total number of epochs, so
    extending a finished run continues the same curve instead of restarting it.
    """
    schedule = keras.optimizers.schedules.ExponentialDecay(
        initial_learning_rate=learning_rate,
        decay_steps=steps_per_epoch,
        decay_rate=lr_decay,
    )
    return keras.optimizers.Adam(learning_rate=schedule)


class Steps:
    """Compiled (tf.function) train and evaluation steps for one model and optimizer."""

    def __init__(self, model, optimizer):
        self.model = model
        self.optimizer = optimizer
        # Sum over the batch; the caller divides by the number of examples so that a
        # short last batch weighs what it should.
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="sum"
        )
        self.train_step = tf.function(self._train_step, reduce_retracing=True)
        self.eval_step = tf.function(self._eval_step, reduce_retracing=True)

    def _train_step(self, images, labels):
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            loss_sum = self.loss_fn(labels, logits)
            mean_loss = loss_sum / tf.cast(tf.shape(labels)[0], loss_sum.dtype)
        variables = self.model.trainable_variables
        gradients = tape.gradient(mean_loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
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


def go_train(steps, dataset, should_stop=None, start_step=0, sums=None, after_step=None):
    """Train over `dataset` (the rest of one epoch); returns {'loss', 'accuracy'}.

    Loss and accuracy are measured on the augmented training batches, in training mode
    (dropout on), as the model saw them. `start_step` and `sums` continue an epoch that a
    mid-epoch checkpoint interrupted; `after_step(step, sums)` runs after every step (the
    loop writes mid-epoch checkpoints from it) and `should_stop()` after that.
    """
    sums = resetter() if sums is None else np.array(sums, dtype=np.float64)
    step = start_step
    for images, labels in dataset:
        # Reading the step's numbers back waits for it to finish, so a checkpoint written
        # after it holds exactly the state that produced them.
        sums += steps.train_step(images, labels).numpy()
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
