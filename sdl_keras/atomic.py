"""Writes that a killed process never leaves half done: the new file appears whole, in one
rename, or the previous one stays; and reading those JSON files back."""

import json
import os


def write_atomically(path, write):
    """Calls `write(temporary_path)`, then renames the file onto `path` in one step, so a
    process killed during the write leaves the previous file, never a truncated one.
    The temporary name keeps `path`'s extension (Keras checks it)."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".tmp{os.getpid()}-{name}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json_atomically(path, value, sort_keys=True):
    """`value` as JSON at `path`, through `write_atomically`."""
    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2, sort_keys=sort_keys)
            f.flush()
            os.fsync(f.fileno())

    write_atomically(path, write)


def read_json(path):
    """The JSON value in `path`; a file that is not JSON is a ValueError naming it."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
