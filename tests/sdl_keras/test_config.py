"""The typed, nested TrainConfig: sections by concern, flat field names for the command line,
the help beside each field, config.json round trips (and runs written flat before the
nesting still load)."""

import dataclasses
import json

import pytest

from sdl_keras import cli
from sdl_keras.config import SECTIONS, TrainConfig
from tests import testing


def test_sections_and_flat_names():
    config = TrainConfig.from_flat(num_rows=3, augment=True, output_dir="runs/x", reg_weight=None, ks=[1, 5])
    assert (config.model.num_rows, config.model.augment, config.runtime.output_dir) == (3, True, "runs/x")
    assert config.model.augmentation == "official"  # the recipe --augment applies
    assert config.loss.reg_weight is None and config.evaluation.ks == (1, 5)
    flat = config.flat()
    assert flat["num_rows"] == 3 and len(flat) == sum(len(dataclasses.fields(c)) for c in SECTIONS.values())
    assert config.replace(num_rows=5).model.num_rows == 5 and config.model.num_rows == 3  # immutable
    with pytest.raises(KeyError, match="Unknown TrainConfig field"):
        config.replace(num_row=5)


def test_every_field_has_its_help_and_names_are_unique():
    names = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)), "flat flag names must be unique across sections"
    assert all(f.metadata.get("help") for cls in SECTIONS.values() for f in dataclasses.fields(cls))


def test_config_json_round_trips_nested_and_reads_flat_legacy_files(tmp_path):
    config = TrainConfig.from_flat(reg_weight=None, ks=(10, 20), max_positives=12, verbose=0, crop="center")
    config.save(tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert set(saved) == set(SECTIONS) and saved["data"]["crop"] == "center"
    assert TrainConfig.load(tmp_path / "config.json") == config
    legacy = {"num_rows": 2, "aggregation": "l2", "image_size": 48, "verbose": 1, "ks": [3], "augment": True}
    (tmp_path / "old.json").write_text(json.dumps(legacy))
    old = TrainConfig.load(tmp_path / "old.json")
    assert (old.model.num_rows, old.loss.aggregation, old.runtime.verbose, old.evaluation.ks) == (2, "l2", "1", (3,))
    assert old.model.augmentation == "crop_flip_cutout"  # the recipe `--augment` switched on
    (tmp_path / "bad.json").write_text(json.dumps({"model": {"num_rows": 2, "rows": 3}}))
    with pytest.raises(KeyError, match=r"bad.json: unknown key\(s\) \['rows'\] in section 'model'"):
        TrainConfig.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        TrainConfig.load(tmp_path / "broken.json")


def test_flags_round_trip_through_the_command_line():
    from absl import flags

    flag_values = flags.FlagValues()
    cli.define_config_flags(TrainConfig, flag_values, aliases={"run_dir": "output_dir"})
    flag_values(["train", "--num_rows=3", "--noaugment", "--run_dir=runs/alias", "--reg_weight=none", "--ks=1,3",
                 "--crop=center"])
    config = cli.config_from_flags(TrainConfig, flag_values)
    assert (config.model.num_rows, config.runtime.output_dir, config.loss.reg_weight) == (3, "runs/alias", None)
    assert config.evaluation.ks == (1, 3) and config.data.crop == "center"
    assert "principal directions per image" in flag_values["num_rows"].help
    with pytest.raises(flags.IllegalFlagValueError):
        flag_values(["train", "--crop=middle"])


if __name__ == "__main__":
    testing.run(__file__)
