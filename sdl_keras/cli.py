"""What every sdl_keras command line shares: flags from typed configs, and (from
pipelines.command) the entry point that turns bad input into one clear line.

Every command accepts `--flagfile=configs/NAME.flags`. Optional fields take "none".
"""

import dataclasses

from absl import flags

from pipelines.command import no_arguments, run, setup_logging, split_pipeline_options  # noqa: F401  (entry points)
from sdl_keras.config import leaf_type


def define_config_flags(config_cls, flag_values=flags.FLAGS, aliases=None):
    """One flag per leaf field of a (nested) dataclass config, with the field's default and help."""
    for field, default in _leaves(config_cls(), config_cls):
        kind, optional = leaf_type(field)
        help_text = field.metadata.get("help", field.name.replace("_", " "))
        choices = field.metadata.get("choices")
        if kind is tuple:
            flags.DEFINE_list(field.name, [str(v) for v in default], help_text, flag_values=flag_values)
        elif optional:
            flags.DEFINE_string(field.name, "none" if default is None else str(default),
                                help_text + " ('none' to unset)", flag_values=flag_values)
        elif choices:
            flags.DEFINE_enum(field.name, default, list(choices), help_text, flag_values=flag_values)
        elif kind is bool:
            flags.DEFINE_bool(field.name, default, help_text, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(field.name, default, help_text, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(field.name, default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(field.name, default, help_text, flag_values=flag_values)
    for alias, name in (aliases or {}).items():
        flags.DEFINE_alias(alias, name, flag_values=flag_values)


def define_tag_encoder_flags(encoder_help, templates_help="--tag_encoder's prompt templates, '|'-separated "
                              "(default: the run's)."):
    """--tag_encoder (a keras_hub text encoder preset: a name or a directory), --tag_templates
    and --tag_encoder_cache, for the commands that embed text (sdl_keras.embeddings.text_encoder)."""
    flags.DEFINE_string("tag_encoder", None, encoder_help)
    flags.DEFINE_string("tag_templates", None, templates_help)
    flags.DEFINE_string("tag_encoder_cache", None, "Folder of cached --tag_encoder vectors (default: "
                        "~/.cache/sdl_keras/tag_vectors).")


def _leaves(config, config_cls):
    """(field, default value) of every leaf of a config, sections flattened."""
    for field in dataclasses.fields(config_cls):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, type(value))
        else:
            yield field, value


def config_from_flags(config_cls, flag_values=flags.FLAGS):
    """An instance of a config from parsed flags (`config_cls.from_flat`)."""
    values = {}
    for field, _ in _leaves(config_cls(), config_cls):
        kind, optional = leaf_type(field)
        value = flag_values[field.name].value
        if kind is tuple:
            value = tuple(int(v) for v in value)
        elif optional:
            if value is None or str(value).lower() in ("none", ""):
                value = None
            else:
                try:
                    value = kind(value)
                except ValueError:
                    raise flags.ValidationError(f"--{field.name}={value!r} is not a {kind.__name__} or 'none'.")
        values[field.name] = value
    return config_cls.from_flat(**values)
