"""The README's "from your own code" example runs as a user runs it, on the demo data."""

import os
import subprocess
import sys

from pipelines.readers.demo import DemoConfig, make_demo_dataset
from tests import testing


def test_example_trains_and_prints_the_results_table(tmp_path):
    make_demo_dataset(str(tmp_path / "demo"), DemoConfig(num_train=96, num_test=48, image_size=32, max_objects=2))
    done = subprocess.run(
        [sys.executable, os.path.join(testing.REPO_ROOT, "examples", "fit_your_own.py"), f"--data={tmp_path / 'demo'}",
         "--image_size=32", "--epochs=1", "--batch_size=16", "--steps_per_epoch=3"],
        capture_output=True, text=True, env=testing.python_env(), cwd=str(tmp_path), timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "labels (96, 40) -> seen columns (96, 32)" in done.stdout
    table = [line for line in done.stdout.splitlines() if "|" in line]
    assert table[0].startswith("Method") and "mAP" in table[0]
    assert [row.split("|")[1].strip() for row in table[1:]] == ["ZSL", "GZSL", "ZSL", "GZSL"]


if __name__ == "__main__":
    testing.run(__file__)
