"""MatrixHead: the SDL model's head (paper, Sec. 3.1)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="sdl_keras")
class MatrixHead(keras.layers.Layer):
    """Maps pooled image features to the matrix of principal directions A.

    A linear map from the feature vector to M x d values, viewed as M rows of
    word-vector size d: each row is one principal direction (paper, Sec. 3.1).

    Shape contract: features (B, F) -> A (B, M, d), M = `num_rows`, d = `embed_dim`.
    The official PyTorch head views its flat (M * d) output as (d, M); this layer
    uses row-major (M, d), and `sdl_keras.convert` reorders official weights.

    Args:
        num_rows: M, the number of principal directions.
        embed_dim: d, the word-vector dimension.
        use_bias: whether the linear map has a bias (the official head,
            `Linear(F, M * d, bias=False)`, has none).
        kernel_initializer: default: as torch's `Linear` (kaiming_uniform with
            a = sqrt(5)), U(-1/sqrt(F), 1/sqrt(F)) for F features.
        bias_initializer, kernel_regularizer: as `keras.layers.Dense`.
    """

    def __init__(
        self,
        num_rows,
        embed_dim,
        use_bias=False,
        kernel_initializer=None,
        bias_initializer="zeros",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_rows) < 1 or int(embed_dim) < 1:
            raise ValueError(
                f"MatrixHead needs num_rows >= 1 and embed_dim >= 1, got "
                f"num_rows={num_rows}, embed_dim={embed_dim}."
            )
        self.num_rows = int(num_rows)
        self.embed_dim = int(embed_dim)
        self.use_bias = bool(use_bias)
        # limit sqrt(3 * scale / fan_in) = 1 / sqrt(fan_in): torch's Linear default.
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"))
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        features = input_shape[-1]
        if features is None:
            raise ValueError(f"MatrixHead needs a known feature size, got input shape {input_shape}.")
        units = self.num_rows * self.embed_dim
        self.kernel = self.add_weight(
            name="kernel",
            shape=(features, units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.bias = (
            self.add_weight(name="bias", shape=(units,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )

    def call(self, features):
        flat = ops.matmul(features, self.kernel)
        if self.bias is not None:
            flat = flat + self.bias
        return ops.reshape(flat, (-1, self.num_rows, self.embed_dim))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_rows, self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_rows=self.num_rows,
            embed_dim=self.embed_dim,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
        )
        return config
