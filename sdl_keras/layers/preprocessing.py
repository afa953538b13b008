"""Input scaling layers that turn uint8-range images into what a backbone expects."""

import keras
from keras import ops

# keras.applications' "caffe" mode: BGR channel means of ImageNet.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="sdl_keras")
class CaffePreprocessing(keras.layers.Layer):
    """keras.applications' "caffe" preprocessing (ResNet50, VGG19): RGB -> BGR, minus ImageNet's channel means.

    Shape contract: images (B, H, W, 3) RGB in [0, 255] -> (B, H, W, 3) BGR, zero-centred.
    """

    def call(self, images):
        bgr = ops.flip(ops.cast(images, self.compute_dtype), axis=-1)
        return bgr - ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=self.compute_dtype)
