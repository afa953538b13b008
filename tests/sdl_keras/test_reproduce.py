"""The paper-reproduction command on fixtures: configs/coco.flags with /path/to replaced by
--data_dir (a tiny COCO laid out as the config names it, the official restricted test
files included), shrunk by overrides; it prints the paper's Table 2 row beside the run's,
and the run's row is what `evaluate` wrote. Table 1's layout without training."""

import json
import os
import subprocess
import sys

from sdl_keras import paper, reproduction
from tests import testing
from tests.pipelines.readers.coco_fixtures import write_coco_data_dir


def cells(line):
    return [cell.strip() for cell in line.split("|")]


def test_reproduce_coco_prints_table_2_beside_the_run(tmp_path):
    data_dir = str(tmp_path / "data")
    write_coco_data_dir(data_dir)
    run_dir = str(tmp_path / "runs" / "coco")
    overrides = ["--backbone=small_cnn", "--backbone_weights=none", "--image_size=32", "--epochs=1", "--batch_size=4",
                 "--jit_compile=false", "--eval_every=0", "--verbose=0", f"--output_dir={run_dir}"]
    done = subprocess.run(
        [sys.executable, "-m", "sdl_keras.reproduce", "--flagfile=configs/reproduce.flags", "--dataset=coco",
         f"--data_dir={data_dir}", f"--overrides={','.join(overrides)}"],
        cwd=testing.REPO_ROOT, env=testing.python_env(), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    # The paper config ran: the official test files, GZSL and ZSL each from its own file.
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    assert config["data"]["test_source"] == os.path.join(data_dir, "coco", "annotations", "val_17_48.json")
    assert results["settings"]["zsl_test_source"].endswith("val_unseen.json")
    assert (results["model"]["gzsl/num_images"], results["model"]["zsl/num_images"]) == (3, 4)
    assert config["model"]["augmentation"] == "official" and config["data"]["decode_mode"] == "pil_bilinear"
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("Method"))
    assert cells(lines[header]) == ["Method", "Task", "P@3", "R@3", "F1@3", "mAP"]
    rows = {(c[0], c[1]): c[2:] for c in map(cells, lines[header + 2:header + 6])}
    assert rows[("Ours (paper, Table 2)", "ZSL")] == ["26.3", "65.3", "37.5", "-"]
    assert rows[("Ours (paper, Table 2)", "GZSL")] == ["59.0", "60.8", "59.9", "-"]
    for task in ("zsl", "gzsl"):
        expected = [f"{results['model'][f'{task}/{m}']:.1f}" for m in ("P@3", "R@3", "F1@3", "mAP")]
        assert rows[("SDL (this run)", task.upper())] == expected


def test_table_1_rows_in_the_evaluation_layout():
    ours = {key: 1.0 for key in paper.TABLE1["open_images"]}
    lines = reproduction.comparison_table("open_images", ours).splitlines()
    assert cells(lines[0]) == ["Method", "Task", "P@10", "R@10", "F1@10", "P@20", "R@20", "F1@20", "mAP"]
    assert cells(lines[2]) == ["Ours (paper, Table 1)", "ZSL", "6.1", "47.0", "10.7", "4.4", "68.1", "8.3", "62.9"]
    assert cells(lines[5])[:3] == ["SDL (this run)", "GZSL", "1.0"]
    nus = reproduction.comparison_table("nus_wide", {key: 0.0 for key in paper.TABLE1["nus_wide"]}).splitlines()
    assert cells(nus[3]) == ["Ours (paper, Table 1)", "GZSL", "27.7", "13.9", "18.5", "23.0", "19.3", "21.0", "12.1"]
    config = reproduction.paper_config("nus_wide", "/data", ["--epochs=1"])
    assert config.data.train_source == "/data/NUS-WIDE" and config.data.tags == "/data/nus_wide/tags.txt"
    assert config.optimizer.epochs == 1 and config.data.batch_size == 192


if __name__ == "__main__":
    testing.run(__file__)
