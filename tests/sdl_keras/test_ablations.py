"""The ablation runner: flagfiles compose into training configs, each ablation trains and is
evaluated zero-shot, and the results form the paper's Table 3 in Markdown."""

import os

import pytest

from pipelines.readers.demo import DemoConfig, make_demo_dataset
from sdl_keras import experiments as ablations
from sdl_keras import paper
from tests import testing

CONFIGS = os.path.join(testing.REPO_ROOT, "configs")


def test_the_flagfiles_are_table_3s_trainable_columns():
    files = ablations.expand([os.path.join(CONFIGS, "ablation_*.flags")])
    switches = {}
    for path in files:
        config = ablations.config_from_flagfiles([os.path.join(CONFIGS, "demo.flags"), path])
        assert config.model.backbone == "small_cnn"  # from the base flagfile
        flat = config.flat()
        name = ablations.ablation_name(path)
        switches[name] = tuple(flat[key] for key in ("num_rows", "aggregation", "diversity_weight", "reg_weight"))
        # The first comment line is the column's description, opening with its paper label.
        assert ablations.ablation_description(path).startswith(paper.TABLE3[name][0] + ": ")
    assert switches == {
        "impl": (1, "max", False, None),  # Fast0Tag in this framework
        "base": (7, "l2", False, None),
        "a": (1, "max", True, None),
        "b": (2, "max", True, None),
        "c": (2, "max", True, 0.1),
        "d": (7, "max", True, 0.1),
        "f": (7, "max", False, 0.3),
        "ours": (7, "max", True, 0.3),
    }
    # configs/ablations.flags runs every column but Orig, in the paper's order.
    listed = [line for line in open(os.path.join(CONFIGS, "ablations.flags")) if line.startswith("--ablations=")]
    order = [ablations.ablation_name(p) for p in listed[0].strip().split("=", 1)[1].split(",")]
    assert ["orig", *order] == list(paper.TABLE3) and set(order) == set(switches)


def test_overrides_win_and_missing_flagfiles_are_named(tmp_path):
    config = ablations.config_from_flagfiles(
        [os.path.join(CONFIGS, "demo.flags"), os.path.join(CONFIGS, "ablation_b.flags")], ["--num_rows=3"]
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
    flagfiles = [os.path.join(CONFIGS, "ablation_impl.flags"), os.path.join(CONFIGS, "ablation_c.flags")]
    rows = ablations.run_ablations(flagfiles, os.path.join(CONFIGS, "demo.flags"), str(tmp_path / "runs"), overrides)
    assert list(rows) == ["impl", "c"]
    for name in rows:
        assert os.path.exists(tmp_path / "runs" / name / "model.keras")
        assert 0.0 < rows[name]["results"]["zsl/mAP"] <= 100.0
    table = ablations.markdown_table(rows).splitlines()
    assert table[0].startswith("| Column | Ablation | M | Aggregation | SDW | Regularization | ZSL mAP")
    assert table[0].endswith("| paper ZS mAP | paper GZS mAP |")
    # Orig, the paper's only; then each column's demo figures beside the paper's ZS / GZS mAP.
    assert table[2].startswith("| Orig | Fast0Tag, its original implementation (paper only) |")
    assert table[2].endswith("| - | - | - | - | 15.1 | 3.7 |")
    assert table[3].startswith("| Impl. | Fast0Tag in this framework (M=1, no SDW, no regularization) | 1 | max | no | - |")
    assert table[3].endswith("| 21.6 | 9.7 |")
    assert table[4].startswith("| c | M=2 + SDW + regularization 0.1 | 2 | max | yes | 0.1 | ")
    assert f"| {rows['c']['results']['gzsl/mAP']:.1f} |" in table[4] and table[4].endswith("| 23.8 | 11.0 |")

if __name__ == "__main__":
    testing.run(__file__)
