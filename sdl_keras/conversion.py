"""PyTorch TResNet checkpoints -> Keras weights files: timm's, the original TResNet/ASL
ones, and ZS_SDL's (the library side of `python -m sdl_keras.convert`, which also
re-exports `load_torch_tresnet_weights`).

`--target=backbone` (the default for ImageNet checkpoints) writes weights for
`build_sdl_model(backbone=ARCH, backbone_weights=OUTPUT)`; `--target=sdl` (the default
for ZS_SDL checkpoints) writes the whole SDL model's weights for
`build_sdl_model(backbone=ARCH, num_rows=M, embed_dim=d).load_weights(OUTPUT)`, and the
tags beside them; `--target=classifier` a `tresnet_*(include_top=True)`. How the keys
map is `sdl_keras.models.checkpoints`.

`convert_to_run` turns an official ZS_SDL checkpoint (NUS_mtresnet_224.pth) into a run
directory (sdl_keras.run_dir): the model, the vocabulary of the tags it is evaluated on,
and a config that decodes images as the official infer.py did (`decode_mode="pil_bicubic"`),
which `export`, `tag`, `evaluate` and `search build --run_dir` read as a training run's.
"""

import logging
import os

from sdl_keras.config import TrainConfig
from sdl_keras.embeddings import TagVocabulary
from sdl_keras.models import build_sdl_model, tresnet
from sdl_keras.models.checkpoints import load_torch_tresnet_weights
from sdl_keras.models.torch_files import read_torch_checkpoint, split_checkpoint
from sdl_keras.run_dir import RunDirectory

logger = logging.getLogger(__name__)

TARGETS = ("auto", "backbone", "classifier", "sdl")
ARCHITECTURES = {"tresnet_m": tresnet.tresnet_m, "tresnet_l": tresnet.tresnet_l, "tresnet_xl": tresnet.tresnet_xl}


def build_target_model(arch, target, checkpoint_state, image_size=224, num_rows=7, embed_dim=300):
    """The Keras model a checkpoint converts into, for `target` in TARGETS ("auto" decided here).

    Returns (model, target, skip_head).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown TResNet {arch!r}; expected one of {sorted(ARCHITECTURES)}.")
    weights, _ = tresnet.checkpoint_filter(checkpoint_state)
    if target == "auto":
        target = "sdl" if "embedding.weight" in weights else "backbone"
    if target == "sdl":
        if "embedding.weight" not in weights:
            raise ValueError("target 'sdl' needs a checkpoint with the SDL head 'embedding.weight'.")
        model = build_sdl_model(arch, num_rows=num_rows, embed_dim=embed_dim, image_size=image_size)
        return model, target, False
    shape = (image_size, image_size, 3)
    if target == "classifier":
        if "head.fc.weight" not in weights:
            raise ValueError("target 'classifier' needs a checkpoint with a classifier 'head.fc.weight'.")
        classes = weights["head.fc.weight"].shape[0]
        model = ARCHITECTURES[arch](input_shape=shape, classes=classes, classifier_activation=None)
        return model, target, False
    if target == "backbone":
        return ARCHITECTURES[arch](include_top=False, input_shape=shape, pooling="avg"), target, True
    raise ValueError(f"Unknown target {target!r}; expected one of {TARGETS}.")


def convert_checkpoint(checkpoint, output, arch="tresnet_m", target="auto", image_size=224, num_rows=7,
                       embed_dim=300, tags_output=None, allow_pickle=False):
    """Converts a PyTorch TResNet checkpoint file into a Keras `.weights.h5`.

    Writes the tags of a ZS_SDL checkpoint, one per line, to `tags_output`
    (default: OUTPUT without `.weights.h5`, plus `.tags.txt`). Returns
    (target, ConversionInfo).
    """
    output = os.fspath(output)
    if not output.endswith(".weights.h5"):
        raise ValueError(f"Keras weights files end in .weights.h5; got --output={output!r}.")
    state, metadata = split_checkpoint(read_torch_checkpoint(checkpoint, allow_pickle), checkpoint)
    model, target, skip_head = build_target_model(arch, target, state, image_size, num_rows, embed_dim)
    info = load_torch_tresnet_weights(model, {"model": state, **metadata}, skip_head=skip_head)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    model.save_weights(output)
    if info.tags:
        tags_output = tags_output or output[: -len(".weights.h5")] + ".tags.txt"
        with open(tags_output, "w", encoding="utf-8") as f:
            f.writelines(f"{tag}\n" for tag in info.tags)
    return target, info


def convert_to_run(checkpoint, run_dir, tags, word_vectors, unseen_tags=None, arch="tresnet_m", image_size=224,
                   num_rows=7, decode_mode="pil_bicubic", allow_pickle=False, word_vector_tags=None):
    """Writes a run directory holding an official ZS_SDL checkpoint's model.

    The vocabulary comes from `tags`, `word_vectors` and `unseen_tags` (the tags the model
    is evaluated and served on, e.g. NUS-WIDE's 1006 with the 81 unseen); d is its vectors'
    size and M `num_rows`, checked against the checkpoint's `embedding.weight` (M*d, F).
    The config records the architecture, the sizes and `decode_mode` (default: bicubic, as
    the official infer.py resizes with PIL's `Image.resize`), so every command that reads
    the run decodes images alike. Returns (RunDirectory, ConversionInfo).
    """
    from sdl_keras import saving

    for name, value in (("tags", tags), ("word_vectors", word_vectors)):
        if not value:
            raise ValueError(f"A run directory needs its vocabulary: pass --{name}.")
    run = RunDirectory(run_dir)
    if os.path.exists(run.model_path):
        raise FileExistsError(f"{run.model_path} exists: convert into a new run directory.")
    vocabulary = TagVocabulary.from_files(tags, word_vectors, unseen_tags, allow_pickle=allow_pickle,
                                          vector_tags=word_vector_tags)
    state, metadata = split_checkpoint(read_torch_checkpoint(checkpoint, allow_pickle), checkpoint)
    model, _, _ = build_target_model(arch, "sdl", state, image_size, num_rows, vocabulary.dim)
    info = load_torch_tresnet_weights(model, {"model": state, **metadata})
    if info.tags:
        outside = sorted(set(info.tags) - set(vocabulary.tags))
        logger.info("The checkpoint names %d training tags; %d of them are not in %s%s.", len(info.tags),
                    len(outside), tags, f" (e.g. {outside[:5]})" if outside else "")
    config = TrainConfig.from_flat(
        tags=os.fspath(tags), word_vectors=os.fspath(word_vectors), unseen_tags=os.fspath(unseen_tags or ""),
        word_vector_tags=os.fspath(word_vector_tags or ""), allow_pickle=allow_pickle, image_size=image_size,
        decode_mode=decode_mode, backbone=arch, num_rows=num_rows, output_dir=run.path,
    )
    run.write_vocabulary(vocabulary)
    saving.save_model(model, run.model_path)
    run.write_config(config)
    return run, info
