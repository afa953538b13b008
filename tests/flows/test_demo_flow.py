"""The demo as a user runs it (README, tools/demo.sh), one process per command: the demo
data, then configs/demo.flags as it is and with --augment through train, evaluate
(configs/demo_eval.flags), export, serving, tag and search (configs/search.flags)."""

import json

from tests import testing
from tests.flows import flow

DATA = ("--num_train=64", "--num_test=32", "--num_validation=32", "--image_size=32")


def demo_path(folder, *overrides):
    user = flow.Flow(folder)
    user.run("pipelines.demo", "--flagfile=configs/demo_data.flags", *DATA)
    with open(user.path("data", "demo", "test.jsonl"), encoding="utf-8") as f:
        ids = [json.loads(line)["image"] for line in f]
    with open(user.path("data", "demo", "unseen_tags.txt"), encoding="utf-8") as f:
        unseen_tag = f.readline().strip()
    images = [f"data/demo/{image}" for image in ids[:3]]
    run = flow.user_path(user, "configs/demo.flags", "demo", overrides, images, (), ids, unseen_tag,
                         evaluate_flags=["--flagfile=configs/demo_eval.flags"],
                         search_flags=["--flagfile=configs/search.flags"])
    return run.config()


def test_demo_flags_as_they_are(tmp_path):
    config = demo_path(tmp_path)
    assert not config.model.augment and config.data.dataset == "manifest"
    assert config.model.num_rows == 4 and config.loss.reg_weight == 0.3 and config.optimizer.learning_rate == 3e-3
    assert not config.runtime.jit_compile


def test_demo_flags_with_augment(tmp_path):
    config = demo_path(tmp_path, "--augment")
    assert config.model.augment and config.model.augmentation == "official" and config.model.cutout_rate is None
    assert config.model.num_rows == 4 and config.loss.reg_weight == 0.3 and config.optimizer.learning_rate == 3e-3


if __name__ == "__main__":
    testing.run(__file__)
