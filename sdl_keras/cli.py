"""absl flags from typed configs: one flag per dataclass field, so a CLI stays a thin layer.

Every CLI accepts `--flagfile=configs/NAME.flags`. Optional fields take "none".
"""

import dataclasses
import logging
import typing

from absl import flags


def _base_type(annotation):
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def define_config_flags(config_cls, helps, flag_values=flags.FLAGS):
    """Defines a flag per field of `config_cls` with the field's default."""
    defaults = config_cls()
    for field in dataclasses.fields(config_cls):
        kind, optional = _base_type(field.type)
        default = getattr(defaults, field.name)
        help_text = helps.get(field.name, field.name.replace("_", " "))
        if kind is tuple:
            flags.DEFINE_list(field.name, [str(v) for v in default], help_text, flag_values=flag_values)
        elif optional:
            flags.DEFINE_string(
                field.name, "none" if default is None else str(default), help_text + " ('none' to unset)",
                flag_values=flag_values,
            )
        elif kind is bool:
            flags.DEFINE_bool(field.name, default, help_text, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(field.name, default, help_text, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(field.name, default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(field.name, default, help_text, flag_values=flag_values)


def config_from_flags(config_cls, flag_values=flags.FLAGS):
    """An instance of `config_cls` from parsed flags."""
    values = {}
    for field in dataclasses.fields(config_cls):
        kind, optional = _base_type(field.type)
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
    return config_cls(**values)


def setup_logging():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
