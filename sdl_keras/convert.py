"""Convert a PyTorch TResNet checkpoint: `python -m sdl_keras.convert --flagfile=configs/convert.flags
--checkpoint=tresnet_m.safetensors --output=tresnet_m.weights.h5` (sdl_keras.conversion says what it
writes), or the official ZS_SDL model into a run directory that export, tag, evaluate and search read:
`--checkpoint=NUS_mtresnet_224.pth --run_dir=runs/nus_official --tags=... --word_vectors=... --unseen_tags=...`.
The loader itself is importable from here: `from sdl_keras.convert import load_torch_tresnet_weights`.
"""

from absl import flags, logging

from sdl_keras import cli
from sdl_keras.models.checkpoints import ConversionInfo, load_torch_tresnet_weights  # noqa: F401  (public names)
from sdl_keras.models.tresnet import CheckpointMismatchError, tresnet_state_dict  # noqa: F401

FLAGS = flags.FLAGS


def define_flags():
    from sdl_keras.config import DECODE_MODES
    from sdl_keras.conversion import ARCHITECTURES, TARGETS

    flags.DEFINE_string("checkpoint", None, "PyTorch TResNet checkpoint: .safetensors, .pth or .pth.tar.")
    flags.DEFINE_string("output", None, "The Keras weights file to write (.weights.h5); or use --run_dir.")
    flags.DEFINE_string("run_dir", None, "Write a run directory (model, vocabulary, config) from an official ZS_SDL "
                        "checkpoint instead, for export, tag, evaluate and search; needs --tags, --word_vectors.")
    flags.DEFINE_string("tags", None, "--run_dir: the tag list the model is evaluated on (seen and unseen).")
    flags.DEFINE_string("word_vectors", None, "--run_dir: the tags' vectors (any format of --word_vectors of train).")
    flags.DEFINE_string("unseen_tags", None, "--run_dir: the unseen (zero-shot) tags among them.")
    flags.DEFINE_enum("decode_mode", "pil_bicubic", list(DECODE_MODES), "--run_dir: how the run decodes images; "
                      "pil_bicubic is what the official infer.py used.")
    flags.DEFINE_enum("arch", "tresnet_m", sorted(ARCHITECTURES), "The TResNet the checkpoint holds.")
    flags.DEFINE_enum(
        "target", "auto", TARGETS,
        "What to write weights for: 'backbone' (the pooled-features TResNet that "
        "build_sdl_model(backbone_weights=) loads; drops the checkpoint's head), 'classifier' "
        "(TResNet with its head.fc), 'sdl' (the whole build_sdl_model model, from a ZS_SDL "
        "checkpoint), 'auto' ('sdl' when the checkpoint has embedding.weight, else 'backbone').",
    )
    flags.DEFINE_integer("image_size", 224, "Input size of the model built (the weights do not depend on it).")
    flags.DEFINE_integer("num_rows", 7, "M of the SDL head (target 'sdl', --run_dir).")
    flags.DEFINE_integer("embed_dim", 300, "d of the SDL head (target 'sdl'; --run_dir takes the vectors' size).")
    flags.DEFINE_string("tags_output", None, "Where a ZS_SDL checkpoint's tags go (default OUTPUT.tags.txt).")
    flags.DEFINE_bool("allow_pickle", False, "Let torch unpickle arbitrary objects (trusted files only).")
    flags.mark_flags_as_required(["checkpoint"])


def main(argv):
    cli.no_arguments(argv)
    from sdl_keras import conversion

    if FLAGS.run_dir:
        run, info = conversion.convert_to_run(
            FLAGS.checkpoint, FLAGS.run_dir, FLAGS.tags, FLAGS.word_vectors, FLAGS.unseen_tags, FLAGS.arch,
            FLAGS.image_size, FLAGS.num_rows, FLAGS.decode_mode, FLAGS.allow_pickle,
        )
        print(f"Wrote run directory {run.path}: {len(info.loaded)} tensors of {FLAGS.checkpoint}, "
              f"{len(run.vocabulary())} tags, decode {FLAGS.decode_mode}.")
        return
    if not FLAGS.output:
        raise ValueError("Pass --output (a .weights.h5 file) or --run_dir (a run directory).")
    target, info = conversion.convert_checkpoint(
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
