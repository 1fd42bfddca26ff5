"""The network: `MnistClassifier`, a small batch-normalised convolutional classifier (Keras 3).

Input: float images in [0, 1] of shape [batch, 28, 28, 1]. Output: unnormalised class scores
(logits) of shape [batch, 10]; the loss applies the softmax, which is numerically safer than
a softmax layer followed by a log.
"""

import keras

MODEL_NAME = "bn-convnet-v3"


@keras.saving.register_keras_serializable(package="mnist_trainer")
class MnistClassifier(keras.Model):
    """Three convolution blocks (conv -> batch norm -> ReLU), dropout, one dense layer.

    Shapes for the default widths (32, 64, 128):

        28x28x1  --conv 5x5, stride 2-->  14x14x32
                 --conv 3x3 -> max-pool-->  7x7x64
                 --conv 3x3 -> max-pool-->  3x3x128  --flatten, dropout-->  1152  --dense-->  10

    The first convolution strides by 2: on two CPU cores the time of a step follows the
    size of the activation maps more than the parameter count, and halving the resolution
    at once costs little accuracy on 28x28 digits. Convolutions carry no bias because
    batch normalisation, right after them, has its own shift.
    """

    def __init__(self, filters=(32, 64, 128), dropout=0.3, num_classes=10, **kwargs):
        super().__init__(**kwargs)
        if len(filters) != 3:
            raise ValueError(f"filters must name three widths, got {filters!r}")
        self.filters = tuple(filters)
        self.dropout_rate = dropout
        self.num_classes = num_classes
        layers = keras.layers

        def batch_norm():
            # Momentum 0.9 (Keras defaults to 0.99): the moving statistics used at
            # inference then settle within tens of steps, which matters for small datasets
            # such as the 4,000-digit offline fallback (31 steps per epoch).
            return layers.BatchNormalization(momentum=0.9)

        self.feature_layers = [
            layers.Conv2D(filters[0], 5, strides=2, padding="same", use_bias=False),
            batch_norm(),
            layers.ReLU(),
            layers.Conv2D(filters[1], 3, padding="same", use_bias=False),
            batch_norm(),
            layers.ReLU(),
            layers.MaxPooling2D(2),
            layers.Conv2D(filters[2], 3, padding="same", use_bias=False),
            batch_norm(),
            layers.ReLU(),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dropout(dropout),
        ]
        self.classifier = layers.Dense(num_classes)

    def call(self, images, training=False):
        x = images
        for layer in self.feature_layers:
            # Keras passes `training` only to layers whose call() accepts it
            # (batch normalisation and dropout).
            x = layer(x, training=training)
        return self.classifier(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=list(self.filters), dropout=self.dropout_rate, num_classes=self.num_classes
        )
        return config


def build_model(num_classes=10):
    """A `MnistClassifier` with its weights created, ready for training."""
    model = MnistClassifier(num_classes=num_classes, name="mnist_classifier")
    # A subclassed model creates its weights on the first call; one dummy image does it.
    model(keras.ops.zeros((1, 28, 28, 1)))
    return model
