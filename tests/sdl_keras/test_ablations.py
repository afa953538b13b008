"""The ablation runner: flagfiles compose into training configs, each ablation trains and is
evaluated zero-shot, and the results form the paper's Table 3 in Markdown."""

import os

import pytest

from pipelines.readers.demo import DemoConfig, make_demo_dataset
from sdl_keras import experiments as ablations
from tests import testing

CONFIGS = os.path.join(testing.REPO_ROOT, "configs")


def test_every_ablation_flagfile_is_a_valid_training_config():
    files = ablations.expand([os.path.join(CONFIGS, "ablation_*.flags")])
    names = [ablations.ablation_name(path) for path in files]
    assert set(names) == {"fast0tag", "l2_baseline", "sdw", "m2_reg", "m7_reg0.1", "m7_reg0.3"}
    switches = {}
    for path in files:
        config = ablations.config_from_flagfiles([os.path.join(CONFIGS, "demo.flags"), path])
        assert config.model.backbone == "small_cnn"  # from the base flagfile
        flat = config.flat()
        switches[ablations.ablation_name(path)] = tuple(
            flat[key] for key in ("num_rows", "aggregation", "diversity_weight", "reg_weight"))
        assert ablations.ablation_description(path)
    assert switches == {
        "fast0tag": (1, "max", False, None),
        "l2_baseline": (7, "l2", False, None),
        "sdw": (7, "max", True, None),
        "m2_reg": (2, "max", True, 0.3),
        "m7_reg0.1": (7, "max", True, 0.1),
        "m7_reg0.3": (7, "max", True, 0.3),
    }


def test_overrides_win_and_missing_flagfiles_are_named(tmp_path):
    config = ablations.config_from_flagfiles(
        [os.path.join(CONFIGS, "demo.flags"), os.path.join(CONFIGS, "ablation_sdw.flags")], ["--num_rows=3"]
    )
    assert config.model.num_rows == 3 and config.loss.diversity_weight
    with pytest.raises(FileNotFoundError, match="nothing.flags"):
        ablations.config_from_flagfiles([str(tmp_path / "nothing.flags")])
    with pytest.raises(FileNotFoundError, match="No ablation flagfile matches"):
        ablations.expand([str(tmp_path / "ablation_*.flags")])


def test_runner_trains_evaluates_and_writes_the_table(tmp_path):
    files = make_demo_dataset(str(tmp_path / "demo"), DemoConfig(num_train=96, num_test=32, image_size=32,
                                                                 max_objects=2))
    overrides = [
        f"--train_source={files['train.jsonl']}", f"--test_source={files['test.jsonl']}", f"--tags={files['tags.txt']}",
        f"--word_vectors={files['words.vec']}", f"--unseen_tags={files['unseen_tags.txt']}", "--image_size=32",
        "--batch_size=32", "--epochs=1", "--steps_per_epoch=2", "--jit_compile=false", "--eval_every=0",
        "--validation_source=", "--calibrate=false",
        "--verbose=0",
    ]
    flagfiles = [os.path.join(CONFIGS, "ablation_fast0tag.flags"), os.path.join(CONFIGS, "ablation_m2_reg.flags")]
    rows = ablations.run_ablations(flagfiles, os.path.join(CONFIGS, "demo.flags"), str(tmp_path / "runs"), overrides)
    assert list(rows) == ["fast0tag", "m2_reg"]
    for name in rows:
        assert os.path.exists(tmp_path / "runs" / name / "model.keras")
        assert 0.0 < rows[name]["results"]["zsl/mAP"] <= 100.0
    table = ablations.markdown_table(rows).splitlines()
    assert table[0].startswith("| Ablation | M | Aggregation | Diversity weight | Regularization | ZSL mAP")
    assert table[2].startswith("| Fast0Tag | 1 | max | no | - | ")
    assert table[3].startswith("| M=2 + regularization | 2 | max | yes | 0.3 | ")
    assert f"{rows['m2_reg']['results']['gzsl/mAP']:.1f} |" in table[3]


if __name__ == "__main__":
    testing.run(__file__)
