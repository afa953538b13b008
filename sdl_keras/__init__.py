"""sdl-keras: zero-shot multi-label tagging with Semantic Diversity Learning in Keras 3.

Ben-Cohen et al., "Semantic Diversity Learning for Zero-Shot Multi-label
Classification", ICCV 2021. The library code is backend-agnostic (`keras.ops`);
TensorFlow-specific code lives in `pipelines/`, export and serving.
"""

__version__ = "0.1.0"
