"""Convert a PyTorch TResNet checkpoint: `python -m sdl_keras.convert --flagfile=configs/convert.flags
--checkpoint=tresnet_m.safetensors --output=tresnet_m.weights.h5` (sdl_keras.conversion says what it
writes). The loader itself is importable from here: `from sdl_keras.convert import load_torch_tresnet_weights`.
"""

from absl import flags, logging

from sdl_keras import cli
from sdl_keras.models.checkpoints import ConversionInfo, load_torch_tresnet_weights  # noqa: F401  (public names)
from sdl_keras.models.tresnet import CheckpointMismatchError, tresnet_state_dict  # noqa: F401

FLAGS = flags.FLAGS


def define_flags():
    from sdl_keras.conversion import ARCHITECTURES, TARGETS

    flags.DEFINE_string("checkpoint", None, "PyTorch TResNet checkpoint: .safetensors, .pth or .pth.tar.")
    flags.DEFINE_string("output", None, "The Keras weights file to write (.weights.h5).")
    flags.DEFINE_enum("arch", "tresnet_m", sorted(ARCHITECTURES), "The TResNet the checkpoint holds.")
    flags.DEFINE_enum(
        "target", "auto", TARGETS,
        "What to write weights for: 'backbone' (the pooled-features TResNet that "
        "build_sdl_model(backbone_weights=) loads; drops the checkpoint's head), 'classifier' "
        "(TResNet with its head.fc), 'sdl' (the whole build_sdl_model model, from a ZS_SDL "
        "checkpoint), 'auto' ('sdl' when the checkpoint has embedding.weight, else 'backbone').",
    )
    flags.DEFINE_integer(
        "image_size", 224, "Input size of the model built for conversion (the weights do not depend on it)."
    )
    flags.DEFINE_integer("num_rows", 7, "M of the SDL head (target 'sdl').")
    flags.DEFINE_integer("embed_dim", 300, "d of the SDL head (target 'sdl').")
    flags.DEFINE_string("tags_output", None, "Where a ZS_SDL checkpoint's tags go (default OUTPUT.tags.txt).")
    flags.DEFINE_bool("allow_pickle", False, "Let torch unpickle arbitrary objects (trusted files only).")
    flags.mark_flags_as_required(["checkpoint", "output"])


def main(argv):
    cli.no_arguments(argv)
    from sdl_keras.conversion import convert_checkpoint

    target, info = convert_checkpoint(
        FLAGS.checkpoint, FLAGS.output, FLAGS.arch, FLAGS.target, FLAGS.image_size, FLAGS.num_rows,
        FLAGS.embed_dim, FLAGS.tags_output, FLAGS.allow_pickle,
    )
    logging.info(
        "Converted %d tensors of %s into %s weights %s (skipped %d: %s).", len(info.loaded), FLAGS.checkpoint,
        target, FLAGS.output, len(info.skipped), ", ".join(info.skipped[:5]),
    )
    if info.tags:
        logging.info("The checkpoint's %d tags were written beside the weights.", len(info.tags))


def run():
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()
