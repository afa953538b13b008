"""The SDL model's own Keras layers; importing this package registers them all.

- `MatrixHead`: pooled features -> the matrix of principal directions A.
- `Augmentation` (with `RandomResizedCrop`, `Cutout`): training augmentation at the
  front of the model, active only with training=True.
- `CaffePreprocessing`: keras.applications' "caffe" input scaling.
"""

from sdl_keras.layers.augmentation import Augmentation, Cutout, RandomResizedCrop, recipe_augmentation
from sdl_keras.layers.matrix_head import MatrixHead
from sdl_keras.layers.preprocessing import CaffePreprocessing

__all__ = ["Augmentation", "CaffePreprocessing", "Cutout", "MatrixHead", "RandomResizedCrop", "recipe_augmentation"]
