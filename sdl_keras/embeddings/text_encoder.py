"""Tag vectors from a text encoder: a keras_hub CLIP or SigLIP text tower embeds any phrase.

Each tag is embedded through prompt templates ("a photo of a {}."), each prompt's embedding
l2-normalized, the mean over templates l2-normalized again: CLIP's zero-shot prompt ensemble
(Radford et al. 2021, Sec. 3.1.4). The encoder is a keras_hub preset: a name (e.g.
`clip_vit_base_patch16`, `siglip_base_patch16_224`), downloaded by keras_hub on first use where
the network allows, or a local preset directory (`Backbone.save_to_preset` and
`Preprocessor.save_to_preset` of the same folder).

Embeddings are cached in `<cache>/<key>.npz` (arrays tags, vectors), the key a hash of the
encoder (a preset name, or a directory's path and files) and the templates, so tagging,
search and repeated training runs embed each tag once.
"""

import hashlib
import json
import logging
import os

import numpy as np

from sdl_keras.atomic import write_atomically
from sdl_keras.embeddings.formats import l2_normalize

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATES = ("a photo of a {}.",)
TEMPLATE_SEPARATOR = "|"
DEFAULT_CACHE = os.path.join("~", ".cache", "sdl_keras", "tag_vectors")


def parse_templates(text):
    """'a photo of a {}.|a picture of a {}.' -> the templates, each holding one '{}'."""
    templates = tuple(t.strip() for t in (text or "").split(TEMPLATE_SEPARATOR) if t.strip()) or DEFAULT_TEMPLATES
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"Each prompt template needs exactly one '{{}}' where the tag goes: {bad}.")
    return templates


def encoder_key(preset, templates):
    """The cache key of an encoder and its templates: a preset name as it is; a preset
    directory by its files (names, sizes, modification times), so a rebuilt one is a new key."""
    identity = {"preset": str(preset), "templates": list(templates)}
    if os.path.isdir(preset):
        files = sorted(os.path.relpath(os.path.join(root, name), preset)
                       for root, _, names in os.walk(preset) for name in names)
        identity["preset"] = os.path.realpath(preset)
        identity["files"] = [(f, os.stat(os.path.join(preset, f)).st_size, os.stat(os.path.join(preset, f)).st_mtime_ns)
                             for f in files]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


class TextTagEncoder:
    """A keras_hub CLIP/SigLIP backbone's text tower and its preprocessor, as a tag-vector source.

    Shape contract: `texts(strings (T,))` -> (T, d) float32 l2-normalized embeddings;
    `encode(tags (C,))` -> (C, d), each tag's templates averaged (module docstring).

    Args:
        preset: a keras_hub preset name or a local preset directory.
        templates: prompt templates, each with one "{}".
    """

    def __init__(self, preset, templates=DEFAULT_TEMPLATES):
        try:
            import keras_hub
        except ImportError:
            raise ImportError("--tag_encoder needs keras-hub and tensorflow-text (requirements.txt pins them).") from None
        self.preset, self.templates = str(preset), tuple(templates)
        if os.path.sep in self.preset and not os.path.isdir(self.preset):
            raise FileNotFoundError(f"--tag_encoder={self.preset}: no such preset directory.")
        self.backbone = keras_hub.models.Backbone.from_preset(self.preset)
        if not hasattr(self.backbone, "get_text_embeddings"):
            raise ValueError(f"--tag_encoder={self.preset} is a {type(self.backbone).__name__}, which has no text "
                             "encoder; give a CLIP or SigLIP preset.")
        name = type(self.backbone).__name__.replace("Backbone", "Preprocessor")
        self.preprocessor = getattr(keras_hub.models, name).from_preset(self.preset)
        self.preprocessor.image_converter = None  # text only
        self.dim = int(self.backbone.get_text_embeddings(self.token_ids(["a"])).shape[-1])

    def __repr__(self):
        return f"TextTagEncoder({self.preset!r}, templates={self.templates!r})"

    def token_ids(self, texts):
        """Token ids (T, sequence_length) of strings, as the encoder's preprocessor makes them."""
        return self.preprocessor({"images": None, "prompts": texts})["token_ids"]

    def embed(self, texts):
        """l2-normalized embeddings of strings, as tensors of the backend (graph ops under tf.function)."""
        import keras

        embeddings = self.backbone.get_text_embeddings(self.token_ids(texts))
        return embeddings / keras.ops.maximum(keras.ops.norm(embeddings, axis=-1, keepdims=True), 1e-12)

    def prompts(self, template, tags):
        return [template.replace("{}", tag) for tag in tags]

    def encode(self, tags, batch_size=64):
        """(C, d) float32 vectors of `tags`: the mean of their templates' embeddings, l2-normalized."""
        import keras

        tags = [str(t) for t in tags]
        total = np.zeros((len(tags), self.dim), np.float64)
        for template in self.templates:
            for start in range(0, len(tags), batch_size):
                prompts = self.prompts(template, tags[start:start + batch_size])
                total[start:start + len(prompts)] += keras.ops.convert_to_numpy(self.embed(prompts))
        return l2_normalize(total / len(self.templates))


def _cache_path(cache_dir, preset, templates):
    return os.path.join(os.path.expanduser(cache_dir or DEFAULT_CACHE), encoder_key(preset, templates) + ".npz")


def encode_tags(tags, preset, templates=DEFAULT_TEMPLATES, cache_dir=None, encoder=None):
    """(C, d) vectors of `tags` from a text encoder, through the cache: tags already in it are
    read, the others embedded (by `encoder`, else one loaded from `preset`) and added."""
    tags = [str(t) for t in tags]
    path = _cache_path(cache_dir, preset, templates)
    cached = {}
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as data:
            cached = dict(zip((str(t) for t in data["tags"]), data["vectors"]))
    missing = [t for t in dict.fromkeys(tags) if t not in cached]
    if missing:
        encoder = encoder or TextTagEncoder(preset, templates)
        logger.info("Embedding %d tag(s) with %s (cache %s)", len(missing), encoder, path)
        cached.update(zip(missing, encoder.encode(missing)))
        names = list(cached)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomically(path, lambda temporary: np.savez(
                temporary, tags=np.array(names, dtype=str), vectors=np.stack([cached[n] for n in names]),
                encoder=np.array(str(preset)), templates=np.array(list(templates), dtype=str)))
        except OSError as error:
            # The cache only saves time: the vectors are computed, so the command goes on.
            logger.warning("Cannot write the tag-vector cache %s (%s); the tags will be embedded again next time. "
                           "Point --tag_encoder_cache at a writable folder.", path, error)
    return np.stack([cached[t] for t in tags]).astype(np.float32)
