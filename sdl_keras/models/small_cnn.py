"""A small CNN backbone for the synthetic demo and the tests (not a benchmark model)."""

import keras
from keras import layers


def small_cnn(input_shape=(64, 64, 3), widths=(16, 32, 64, 128), name="small_cnn"):
    """Conv-BN-ReLU stages, each halving the resolution, then global average pooling.

    Shape contract: images (B, H, W, 3) in [0, 1] -> features (B, widths[-1]).
    """
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for stage, width in enumerate(widths):
        for conv in range(2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"stage{stage}_conv{conv}")(x)
            x = layers.BatchNormalization(name=f"stage{stage}_bn{conv}")(x)
            x = layers.ReLU(name=f"stage{stage}_relu{conv}")(x)
        if stage < len(widths) - 1:
            x = layers.MaxPooling2D(name=f"stage{stage}_pool")(x)
    features = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, features, name=name)
