"""The network: `MnistClassifier`, a small batch-normalised convolutional classifier (Keras 3).

Input: float images in [0, 1] of shape [batch, 28, 28, 1]. Output: unnormalised class scores
(logits) of shape [batch, 10]; the loss applies the softmax, which is numerically safer than
a softmax layer followed by a log.
"""

import keras

MODEL_NAME = "bn-convnet-v1"


@keras.saving.register_keras_serializable(package="mnist_trainer")
class MnistClassifier(keras.Model):
    """Two convolution blocks (conv 3x3 -> batch norm -> ReLU -> 2x2 max-pool), dropout, dense.

    Shapes for the default widths (32, 64): 28x28x1 -> 26x26x32 -> 13x13x32 -> 11x11x64
    -> 5x5x64 -> 1600 -> 10. Convolutions carry no bias because batch normalisation,
    right after them, has its own shift.
    """

    def __init__(self, filters=(32, 64), dropout=0.3, num_classes=10, **kwargs):
        super().__init__(**kwargs)
        self.filters = tuple(filters)
        self.dropout_rate = dropout
        self.num_classes = num_classes
        self.blocks = []
        for width in self.filters:
            self.blocks.append(
                [
                    keras.layers.Conv2D(width, 3, use_bias=False),
                    keras.layers.BatchNormalization(),
                    keras.layers.ReLU(),
                    keras.layers.MaxPooling2D(2),
                ]
            )
        self.flatten = keras.layers.Flatten()
        self.dropout = keras.layers.Dropout(dropout)
        self.classifier = keras.layers.Dense(num_classes)

    def call(self, images, training=False):
        x = images
        for block in self.blocks:
            for layer in block:
                x = layer(x, training=training) if isinstance(
                    layer, keras.layers.BatchNormalization
                ) else layer(x)
        x = self.flatten(x)
        x = self.dropout(x, training=training)
        return self.classifier(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=list(self.filters), dropout=self.dropout_rate, num_classes=self.num_classes
        )
        return config


def build_model(num_classes=10):
    """A built `MnistClassifier` (weights created) ready for training."""
    model = MnistClassifier(num_classes=num_classes, name="mnist_classifier")
    # A subclassed model creates its weights on the first call; one dummy image does it.
    model(keras.ops.zeros((1, 28, 28, 1)))
    return model
