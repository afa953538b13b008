"""The comparison command: it trains the methods asked for, evaluates each the same way and
writes the Table 1 layout from the figures it measured."""

import json
import os
import subprocess
import sys

from pipelines.readers.demo import DemoConfig, make_demo_dataset
from tests import testing


def test_compare_writes_a_table_row_pair_per_method(tmp_path):
    demo = DemoConfig(num_train=64, num_test=32, image_size=32, max_objects=2)
    files = make_demo_dataset(str(tmp_path / "data"), demo)
    out = str(tmp_path / "compare")
    command = [
        sys.executable, "-m", "sdl_keras.compare", f"--flagfile={testing.REPO_ROOT}/configs/compare.flags",
        "--methods=fast0tag,conse", f"--compare_dir={out}", f"--train_source={files['train.jsonl']}",
        f"--test_source={files['test.jsonl']}", f"--tags={files['tags.txt']}", f"--word_vectors={files['words.vec']}",
        f"--unseen_tags={files['unseen_tags.txt']}", "--image_size=32", "--batch_size=16", "--epochs=1",
        "--steps_per_epoch=1", "--jit_compile=false",
    ]
    result = subprocess.run(command, env=testing.python_env(), capture_output=True, text=True, cwd=testing.REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(out, "comparison.json")) as f:
        figures = json.load(f)
    assert list(figures) == ["fast0tag", "conse", "random scores"]
    with open(os.path.join(out, "comparison.md")) as f:
        table = f.read()
    for method, values in figures.items():
        for task in ("ZSL", "GZSL"):
            row = next(line for line in table.splitlines() if line.startswith(method) and f"| {task} " in line)
            assert row.rstrip().endswith(f"{values[f'{task.lower()}/mAP']:.1f}"), row
    # Each method's run is complete: it can be evaluated and exported on its own.
    for method in ("fast0tag", "conse"):
        run_files = set(os.listdir(os.path.join(out, method)))
        assert {"model.keras", "config.json", "vocabulary.npz", "results.json"} <= run_files
    with open(os.path.join(out, "conse", "config.json")) as f:
        assert json.load(f)["model"]["num_rows"] == 1


def test_tag_sources_name_a_vector_file_or_a_text_encoder():
    import pytest

    from sdl_keras.experiments import parse_tag_sources

    sources = parse_tag_sources(["words=data/words.vec", "clip=encoder:presets/clip"])
    assert sources == {"words": {"word_vectors": "data/words.vec", "tag_encoder": ""},
                       "clip": {"tag_encoder": "presets/clip"}}
    for bad in (["words"], ["=x.vec"], ["a=x.vec", "a=y.vec"]):
        with pytest.raises(ValueError, match="NAME=FILE or NAME=encoder:PRESET"):
            parse_tag_sources(bad)


if __name__ == "__main__":
    testing.run(__file__)
