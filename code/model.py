"""The networks: `MnistClassifier` (batch-normalised convnets) and `SeedClassifier` (the original recipe).

Input: float images in [0, 1] of shape [batch, 28, 28, 1]. Output: unnormalised class scores
(logits) of shape [batch, 10], always float32; the loss applies the softmax, which is
numerically safer than a softmax layer followed by a log.

`build_model(name, precision="mixed")` builds a network whose layers compute in float16
and keep their weights in float32 (Keras' "mixed_float16" policy, given to each layer
rather than set globally, so other models in the process are unaffected).
"""

import keras
import tensorflow as tf

# Bumped whenever an architecture or what a checkpoint holds changes, so an old run
# directory is refused instead of being resumed into a different network or state
# (5: checkpoints hold the averaged weights too; 6: only the trainable weights are averaged;
# 7: batch normalisation by `FusedBatchNorm`).
MODEL_VERSION = 7


@keras.saving.register_keras_serializable(package="mnist_trainer")
class FusedBatchNorm(keras.layers.Layer):
    """Batch normalisation of NHWC feature maps in one fused TensorFlow kernel.

    The same computation as `keras.layers.BatchNormalization` (per-channel scale `gamma`
    and offset `beta`; batch statistics in training, moving averages with `momentum` in
    inference), but Keras 3 builds it from separate mean, variance and arithmetic ops,
    while `FusedBatchNormV3` does it (and its gradient) in one kernel. With oneDNN on, a
    training step of the standard network is about 1.1-1.2x faster on two CPU cores
    (benchmarks/kernels.py).

    Differences: in training the kernel reports the batch variance with Bessel's
    correction (n / (n - 1)), so the moving variance is larger by that factor (n values
    per channel: below 0.02 % for batch 128, whose smallest maps are 7x7, n = 6,272; 0.13 %
    for batch 16). Only 4-D NHWC inputs, and `training` must be a Python bool (as the
    networks here pass it); unlike Keras' layer, setting `trainable = False` does not
    switch it to inference mode.
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
        self.moving_mean = self.add_weight(shape=channels, initializer="zeros",
                                           trainable=False, name="moving_mean")
        self.moving_variance = self.add_weight(shape=channels, initializer="ones",
                                               trainable=False, name="moving_variance")

    def call(self, inputs, training=False):
        if not training:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, self.gamma, self.beta, mean=self.moving_mean,
                variance=self.moving_variance, epsilon=self.epsilon, is_training=False)
            return outputs
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True)
        keep = self.momentum
        self.moving_mean.assign(keep * self.moving_mean + (1.0 - keep) * mean)
        self.moving_variance.assign(keep * self.moving_variance + (1.0 - keep) * variance)
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="mnist_trainer")
class MnistClassifier(keras.Model):
    """A stem, stages of convolution blocks with max-pooling, dropout, one dense layer.

    Every convolution is followed by batch norm (`FusedBatchNorm`) and ReLU. The stem is a
    5x5 convolution with stride 2 (28x28 -> 14x14); each stage is a run of 3x3
    convolutions followed by 2x2 max-pooling ('same' padding, so 7x7 pools to 4x4 and no
    border is dropped). A stage without convolutions only pools. The default network,
    24 / (32) / (64, 64):

        28x28x1  --conv 5x5 stride 2-->  14x14x24
                 --conv 3x3 -> max-pool-->  7x7x32
                 --conv 3x3 -> conv 3x3 -> max-pool-->  4x4x64
                 --flatten, dropout-->  1024  --dense-->  10

    On two CPU cores the time of a step follows the size of the activation maps more
    than the parameter count, so the resolution is halved at once and the widest layers
    work at 7x7. Convolutions carry no bias: batch normalisation right after them has its
    own.
    """

    def __init__(self, stem=24, stages=((32,), (64, 64)), dropout=0.3, num_classes=10,
                 **kwargs):
        super().__init__(**kwargs)
        self.stem = int(stem)
        self.stages = tuple(tuple(int(width) for width in stage) for stage in stages)
        self.dropout_rate = dropout
        self.num_classes = num_classes
        layers = keras.layers
        policy = self.dtype_policy  # every layer computes in the model's precision

        def conv_block(width, kernel, strides=1):
            return [
                layers.Conv2D(width, kernel, strides=strides, padding="same", use_bias=False,
                              dtype=policy),
                # Momentum 0.9 (Keras defaults to 0.99): the moving statistics used at
                # inference then settle within tens of steps, which matters for small
                # datasets such as the 4,000-digit offline fallback (31 steps per epoch).
                FusedBatchNorm(momentum=0.9, dtype=policy),
                layers.ReLU(dtype=policy),
            ]

        self.feature_layers = conv_block(self.stem, 5, strides=2)
        for stage in self.stages:
            for width in stage:
                self.feature_layers += conv_block(width, 3)
            self.feature_layers.append(layers.MaxPooling2D(2, padding="same", dtype=policy))
        self.feature_layers += [layers.Flatten(dtype=policy),
                                layers.Dropout(dropout, dtype=policy)]
        self.classifier = layers.Dense(num_classes, dtype=policy)

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
                      dropout=self.dropout_rate, num_classes=self.num_classes)
        return config


@keras.saving.register_keras_serializable(package="mnist_trainer")
class SeedClassifier(keras.Model):
    """The original project's network, kept for comparison (`--preset seed`).

    conv 5x5 (8) -> max-pool -> conv 5x5 (32) -> max-pool -> dense 64 (ReLU) -> dense 10,
    no padding, ReLU after each convolution: 28 -> 24 -> 12 -> 8 -> 4, so 4x4x32 = 512
    features. The original ended in a softmax layer; here the loss applies it.
    """

    def __init__(self, num_classes=10, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        layers = keras.layers
        policy = self.dtype_policy
        self.body = [
            layers.Conv2D(8, 5, activation="relu", dtype=policy),
            layers.MaxPooling2D(2, dtype=policy),
            layers.Conv2D(32, 5, activation="relu", dtype=policy),
            layers.MaxPooling2D(2, dtype=policy),
            layers.Flatten(dtype=policy),
            layers.Dense(64, activation="relu", dtype=policy),
            layers.Dense(num_classes, dtype=policy),
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


# Name -> how to build it. The name (with MODEL_VERSION) is recorded in config.json and
# checked when a run resumes.
MODELS = {
    "convnet": lambda num_classes, **kwargs: MnistClassifier(24, ((32,), (64, 64)), 0.3,
                                                             num_classes, **kwargs),
    "convnet-fast": lambda num_classes, **kwargs: MnistClassifier(32, ((), (64,)), 0.0,
                                                                  num_classes, **kwargs),
    "seed": lambda num_classes, **kwargs: SeedClassifier(num_classes, **kwargs),
}
# --precision -> Keras dtype policy of every layer.
DTYPE_POLICIES = {"float32": "float32", "mixed": "mixed_float16"}


def model_record_name(name, precision="float32"):
    """The model's name as config.json records it, e.g. 'convnet-v7' or 'convnet-v7-mixed'.

    The suffix of mixed-precision runs makes versions of this program from before
    --precision (which read the part after the last '-' as the version) refuse such a run
    directory instead of failing to read its checkpoints, whose optimizer state differs.
    """
    return f"{name}-v{MODEL_VERSION}" + ("-mixed" if precision == "mixed" else "")


def build_model(name="convnet", num_classes=10, precision="float32"):
    """The named network with its weights created, ready for training.

    `precision` "mixed" computes in float16 with float32 weights; the weights (and so
    checkpoints of the model alone) are the same in both precisions.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if precision not in DTYPE_POLICIES:
        raise ValueError(f"unknown precision {precision!r}; choose one of "
                         f"{', '.join(DTYPE_POLICIES)}")
    model = MODELS[name](num_classes, dtype=DTYPE_POLICIES[precision])
    # A subclassed model creates its weights on the first call; one dummy image does it.
    model(keras.ops.zeros((1, 28, 28, 1)))
    return model
