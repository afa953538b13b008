"""sdl-keras: zero-shot multi-label tagging with Semantic Diversity Learning in Keras 3.

Ben-Cohen et al., "Semantic Diversity Learning for Zero-Shot Multi-label
Classification", ICCV 2021. The core (layers, models, losses, metrics, evaluation) is
backend-agnostic `keras.ops`; TensorFlow-specific code lives in `pipelines/`, training's
distribution, export and serving.

Importing `sdl_keras` registers every class a saved model may hold (layers,
augmentation, backbones' layers, the baselines' heads, losses, metrics, the optimizer
and its schedule), so
`keras.saving.load_model` finds them in any process; `sdl_keras.saving.load_model` is
what the commands use.
"""

__version__ = "0.2.0"

import pipelines  # noqa: F401  sets TensorFlow's environment defaults before Keras imports it

# Imported for their registrations (keras.saving.register_keras_serializable).
from sdl_keras import layers, losses, metrics, methods, models, optimizers  # noqa: E402,F401
