"""The networks: `MnistClassifier` (batch-normalised convnets) and `SeedClassifier` (the original recipe).

Input: float images in [0, 1] of shape [batch, 28, 28, 1]. Output: unnormalised class scores
(logits) of shape [batch, classes], always float32; the loss applies the softmax, which is
numerically safer than a softmax layer followed by a log.

`build_model(name, precision="mixed")` builds a network whose layers compute in float16
and keep their weights in float32 (Keras' "mixed_float16" policy, given to each layer
rather than set globally, so other models in the process are unaffected).

Every layer has an explicit name. Keras numbers the names it makes up per process
(`conv2d`, then `conv2d_1` for the next network built), and checkpoints find each
variable by its name (`train_state.TrainState.named_variables`), so the names must be the
same in every process that builds the same network.
"""

import keras
import tensorflow as tf

import settings

@keras.saving.register_keras_serializable(package="mnist_trainer")
class FusedBatchNorm(keras.layers.Layer):
    """Batch normalisation of NHWC feature maps in one fused TensorFlow kernel.

    Per-channel scale `gamma` and offset `beta`; batch statistics in training, moving
    averages in inference, as `keras.layers.BatchNormalization` computes it, but in
    `FusedBatchNormV3`, which does the forward pass (and its gradient) in one kernel where
    Keras 3 builds it from separate mean, variance and arithmetic ops.

    Two differences. The moving averages are bias-corrected, as Adam corrects its moments:
    they start from nothing rather than from (mean 0, variance 1), so that they describe
    the batches seen from the first step on. After n updates the average of batch
    statistics x_1..x_n is

        sum_k (1 - m) m^(n-k) x_k / (1 - m^n),     m = `momentum`,

    which is Keras' moving average with the weight of its initial value spread over the
    batches. Keras' initial values dominate for about log(0.01) / log(m) steps (44 for
    m = 0.9), longer than an epoch on a small dataset, and inference with them predicts
    one class for everything. Once m^n rounds to zero in float32 (n above about 160 for
    0.9) both averages are the same numbers. And in training the kernel reports the batch
    variance with Bessel's correction (n / (n - 1) for n values per channel), so the moving
    variance is larger by that factor.

    Only 4-D NHWC inputs, and `training` must be a Python bool (as the networks here pass
    it); unlike Keras' layer, `trainable = False` does not switch it to inference mode.
    """

    def __init__(self, momentum=0.9, epsilon=1e-3, **kwargs):
        # The kernel takes float16 maps with float32 scale, offset and statistics, so under
        # a mixed-precision policy the weights must not be cast to the compute type.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = (input_shape[-1],)
        self.gamma = self.add_weight(shape=channels, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=channels, initializer="zeros", name="beta")
        # Under a tf.distribute strategy each replica computes its own batch statistics;
        # "mean" aggregation averages the replicas' updated values into every copy, so
        # all replicas hold the same moving statistics (Keras' default, "none", lets each
        # copy drift with its own slices). Without a strategy it changes nothing.
        self.moving_mean = self.add_weight(shape=channels, initializer="zeros",
                                           trainable=False, aggregation="mean",
                                           name="moving_mean")
        self.moving_variance = self.add_weight(shape=channels, initializer="ones",
                                               trainable=False, aggregation="mean",
                                               name="moving_variance")
        # Updates of the moving averages so far, for their bias correction.
        self.updates = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                       aggregation="mean", name="updates")

    def call(self, inputs, training=False):
        if not training:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, self.gamma, self.beta, mean=self.moving_mean,
                variance=self.moving_variance, epsilon=self.epsilon, is_training=False)
            return outputs
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True)
        # The corrected average after n updates is keep * (after n - 1) + rate * batch,
        # with rate = (1 - m) / (1 - m^n) and keep = 1 - rate: the first update takes the
        # batch as it is, and later ones tend to (m, 1 - m).
        n = self.updates.assign_add(1.0)
        vanished = 1.0 - tf.pow(self.momentum, n)
        rate = (1.0 - self.momentum) / vanished
        keep = self.momentum * (1.0 - tf.pow(self.momentum, n - 1.0)) / vanished
        self.moving_mean.assign(keep * self.moving_mean + rate * mean)
        self.moving_variance.assign(keep * self.moving_variance + rate * variance)
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, epsilon=self.epsilon)
        return config


# Batch normalisation layers by name: `FusedBatchNorm`, or Keras' own layer (which
# benchmarks/kernels.py compares it with).
BATCH_NORMS = {
    "fused": FusedBatchNorm,
    "keras": keras.layers.BatchNormalization,
}


INPUT_SHAPE = (28, 28, 1)


class _BuildsOnImages:
    """Saving support for the subclassed networks: they create their weights on their first
    call, so a saved .keras file records that and `keras.saving.load_model` calls the
    rebuilt network once before it loads the weights (without this it loads them into a
    network that has none yet)."""

    def build_on_images(self):
        # One dummy image creates every weight.
        self(keras.ops.zeros((1, *INPUT_SHAPE)))

    def get_build_config(self):
        return {"input_shape": [None, *INPUT_SHAPE]}

    def build_from_config(self, config):
        self.build_on_images()


@keras.saving.register_keras_serializable(package="mnist_trainer")
class MnistClassifier(_BuildsOnImages, keras.Model):
    """A stem, stages of convolution blocks with max-pooling, dropout, one dense layer.

    Every convolution is followed by batch norm and ReLU. The stem is a 5x5 convolution
    with stride 2 (28x28 -> 14x14); each stage is a run of 3x3 convolutions followed by
    2x2 max-pooling ('same' padding, so 7x7 pools to 4x4 and no border is dropped). A
    stage without convolutions only pools. The standard network, 24 / (32) / (64, 64):

        28x28x1  --conv 5x5 stride 2-->  14x14x24
                 --conv 3x3 -> max-pool-->  7x7x32
                 --conv 3x3 -> conv 3x3 -> max-pool-->  4x4x64
                 --flatten, dropout-->  1024  --dense-->  10

    The resolution is halved at once and the widest layers work at 7x7, because on CPUs
    the time of a step follows the size of the activation maps more than the parameter
    count. Convolutions carry no bias: batch normalisation right after them has its own.
    `batch_norm` names the batch-normalisation layer (`BATCH_NORMS`).
    """

    def __init__(self, stem=24, stages=((32,), (64, 64)), dropout=0.3, num_classes=10,
                 batch_norm="fused", **kwargs):
        kwargs.setdefault("name", "mnist_classifier")
        super().__init__(**kwargs)
        self.stem = int(stem)
        self.stages = tuple(tuple(int(width) for width in stage) for stage in stages)
        self.dropout_rate = dropout
        self.num_classes = num_classes
        self.batch_norm = batch_norm
        layers = keras.layers
        policy = self.dtype_policy  # every layer computes in the model's precision

        def conv_block(name, width, kernel, strides=1):
            return [
                layers.Conv2D(width, kernel, strides=strides, padding="same", use_bias=False,
                              dtype=policy, name=f"{name}_conv"),
                # Momentum 0.9 (Keras defaults to 0.99): the moving statistics used at
                # inference follow the last few dozen batches, while the weights change.
                BATCH_NORMS[batch_norm](momentum=0.9, dtype=policy, name=f"{name}_bn"),
                layers.ReLU(dtype=policy, name=f"{name}_relu"),
            ]

        self.feature_layers = conv_block("stem", self.stem, 5, strides=2)
        for stage_index, stage in enumerate(self.stages, start=1):
            for block_index, width in enumerate(stage, start=1):
                self.feature_layers += conv_block(f"stage{stage_index}_block{block_index}",
                                                  width, 3)
            self.feature_layers.append(layers.MaxPooling2D(2, padding="same", dtype=policy,
                                                           name=f"stage{stage_index}_pool"))
        self.feature_layers += [layers.Flatten(dtype=policy, name="flatten"),
                                layers.Dropout(dropout, dtype=policy, name="dropout")]
        self.classifier = layers.Dense(num_classes, dtype=policy, name="classifier")

    def call(self, images, training=False):
        x = images
        for layer in self.feature_layers:
            # Keras passes `training` only to layers whose call() accepts it
            # (batch normalisation and dropout).
            x = layer(x, training=training)
        # float32 logits, so that the softmax and loss never compute in float16.
        return keras.ops.cast(self.classifier(x), "float32")

    def get_config(self):
        config = super().get_config()
        config.update(stem=self.stem, stages=[list(stage) for stage in self.stages],
                      dropout=self.dropout_rate, num_classes=self.num_classes,
                      batch_norm=self.batch_norm)
        return config


@keras.saving.register_keras_serializable(package="mnist_trainer")
class SeedClassifier(_BuildsOnImages, keras.Model):
    """The original project's network, kept for comparison (`--preset seed`).

    conv 5x5 (8) -> max-pool -> conv 5x5 (32) -> max-pool -> dense 64 (ReLU) -> dense 10,
    no padding, ReLU after each convolution: 28 -> 24 -> 12 -> 8 -> 4, so 4x4x32 = 512
    features. The original ended in a softmax layer; here the loss applies it.
    """

    def __init__(self, num_classes=10, **kwargs):
        kwargs.setdefault("name", "seed_classifier")
        super().__init__(**kwargs)
        self.num_classes = num_classes
        layers = keras.layers
        policy = self.dtype_policy
        self.body = [
            layers.Conv2D(8, 5, activation="relu", dtype=policy, name="conv1"),
            layers.MaxPooling2D(2, dtype=policy, name="pool1"),
            layers.Conv2D(32, 5, activation="relu", dtype=policy, name="conv2"),
            layers.MaxPooling2D(2, dtype=policy, name="pool2"),
            layers.Flatten(dtype=policy, name="flatten"),
            layers.Dense(64, activation="relu", dtype=policy, name="hidden"),
            layers.Dense(num_classes, dtype=policy, name="classifier"),
        ]

    def call(self, images, training=False):
        x = images
        for layer in self.body:
            x = layer(x)
        return keras.ops.cast(x, "float32")

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes)
        return config


# --precision -> Keras dtype policy of every layer.
DTYPE_POLICIES = {"float32": "float32", "mixed": "mixed_float16"}


def build_model(name="convnet", num_classes=10, precision="float32", batch_norm="fused"):
    """The network `name` of `settings.MODELS`, its weights created, ready for training.

    `precision` "mixed" computes in float16 with float32 weights; the weights (and so
    checkpoints of the model alone) are the same in both precisions. `batch_norm` picks
    the convnets' batch-normalisation layer (`BATCH_NORMS`).
    """
    hyperparameters = settings.MODELS[name]
    policy = DTYPE_POLICIES[precision]
    if hyperparameters is None:
        model = SeedClassifier(num_classes, dtype=policy)
    else:
        model = MnistClassifier(**hyperparameters, num_classes=num_classes,
                                batch_norm=batch_norm, dtype=policy)
    model.build_on_images()
    return model
