"""The SDL model: images -> backbone -> pooled features -> MatrixHead -> A (B, M, d)."""

import keras

from sdl_keras.layers import MatrixHead
from sdl_keras.models.backbones import build_backbone


def build_sdl_model(
    backbone="tresnet_m",
    num_rows=7,
    embed_dim=300,
    image_size=224,
    backbone_weights=None,
    augmentation=None,
    dropout=0.0,
    head_bias=False,
    name="sdl",
):
    """Builds the Keras functional SDL model.

    Shape contract: images (B, image_size, image_size, 3) in the uint8 range [0, 255]
    (any dtype) -> A (B, num_rows, embed_dim) float32.

    Args:
        backbone: a name registered in `sdl_keras.models.backbones.BACKBONES`
            (tresnet_m|l|xl, resnet50, vgg19, efficientnetv2_s, small_cnn) or
            "savedmodel:<directory>".
        num_rows: M, principal directions per image (7 in the paper; 1 is Fast0Tag).
        embed_dim: d, the tag-vector size (300 for FastText).
        image_size: the square input size.
        backbone_weights: the backbone's weights: None (random init), "imagenet"
            (keras.applications backbones), a Keras `.weights.h5` of the backbone
            (e.g. written by `python -m sdl_keras.convert`), or for TResNets a
            PyTorch checkpoint (`.safetensors`, `.pth`) converted on the fly.
        augmentation: optional Keras layers applied first, active only in training.
        dropout: dropout rate on the pooled features.
        head_bias: give the MatrixHead a bias (the official head has none).
    """
    features_model, preprocess = build_backbone(backbone, image_size, backbone_weights)
    images = keras.Input(shape=(image_size, image_size, 3), name="images")
    x = images
    for layer in augmentation or ():
        x = layer(x)
    x = preprocess(x)
    features = features_model(x)
    if dropout:
        features = keras.layers.Dropout(dropout, name="dropout")(features)
    matrix = MatrixHead(num_rows, embed_dim, use_bias=head_bias, dtype="float32", name="matrix_head")(features)
    return keras.Model(images, matrix, name=name)

