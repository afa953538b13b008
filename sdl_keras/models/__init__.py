"""The SDL model and its backbones; importing this package registers their layers.

- `build_sdl_model` (sdl.py): images -> augmentation -> backbone -> MatrixHead -> A.
- `backbones.py`: backbones by name (TResNet, keras.applications, SavedModels, small_cnn).
- `tresnet.py`: TResNet-M/L/XL matching timm; `checkpoints.py` / `torch_files.py`: PyTorch
  checkpoints into them (`sdl_keras.convert` writes the results to files).
"""

from sdl_keras.models.backbones import BACKBONES, build_backbone
from sdl_keras.models.sdl import build_sdl_model

__all__ = ["BACKBONES", "build_backbone", "build_sdl_model"]
