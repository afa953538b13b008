"""MS-COCO as a user runs it, one process per command: configs/coco.flags on instances JSON
fixtures (train2014 and val2014, COCO's category ids) with a seen/unseen split file, the
official restricted test files (val_17_48.json for GZSL, val_unseen.json for ZSL), the tag
lists from `pipelines.to_tfrecord --vocabulary_only` as the flagfile's comments say, and the
official vectors' layout (an 80-row .npy following classes.txt), through train, evaluate,
export, serving, tag and search."""

import os

import numpy as np

from tests import testing
from tests.datasets import COCO_CLASSES, coco_objects, make_coco, restrict_coco, write_zero_shot_split
from tests.flows import flow

SEEN = ("person", "bicycle", "car", "bus", "bird", "dog", "horse", "cup", "chair", "pizza", "hot dog", "teddy bear")
UNSEEN = ("cat", "zebra", "umbrella", "tennis racket")
OTHERS = tuple(c for c in COCO_CLASSES if c not in SEEN + UNSEEN)
SIZE = (40, 30)


def write_coco(user):
    """train2014 with 32 images of seen objects only (and 6 with unseen ones, which training
    leaves out), val2014 with 16 of seen and unseen objects (and 4 of seen only, which the
    test split leaves out); returns the val2014 images the test split keeps."""
    train = {**coco_objects(SEEN, UNSEEN, OTHERS, 32, 1, "train", seed=1),
             **coco_objects(SEEN, UNSEEN, OTHERS, 6, 101, "test", seed=2)}
    val = {**coco_objects(SEEN, UNSEEN, OTHERS, 16, 501, "test", seed=3),
           **coco_objects(SEEN, UNSEEN, OTHERS, 4, 601, "train", seed=4)}
    make_coco(user.path("coco"), COCO_CLASSES, train, "train2014", image_size=SIZE)
    make_coco(user.path("coco"), COCO_CLASSES, val, "val2014", image_size=SIZE)
    write_zero_shot_split(user.path("coco", "split_12_4.json"), SEEN, UNSEEN)
    instances = user.path("coco", "annotations", "instances_val2014.json")
    test_ids = [i for i in sorted(val) if i < 601]  # the seen-and-unseen images: the GZSL test set
    restrict_coco(instances, user.path("coco", "annotations", "val_17_48.json"), test_ids, SEEN + UNSEEN)
    unseen_ids = [i for i in sorted(val) if set(val[i]) & set(UNSEEN)]
    restrict_coco(instances, user.path("coco", "annotations", "val_unseen.json"), unseen_ids, UNSEEN)
    with open(user.path("coco", "classes.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{c}\n" for c in COCO_CLASSES))
    rng = np.random.default_rng(5)
    np.save(user.path("coco", "word_vectors.npy"), rng.normal(size=(len(COCO_CLASSES), 32)).astype(np.float32))
    return [os.path.join("coco", "val2014", f"COCO_val2014_{i:012d}.jpg") for i in test_ids]


def test_coco_flags(tmp_path):
    user = flow.Flow(tmp_path)
    test_images = write_coco(user)
    done = user.run("pipelines.to_tfrecord", "--dataset=coco", "--zero_shot_split=coco/split_12_4.json",
                    "--source=coco/annotations/instances_val2014.json", "--output_dir=coco/lists", "--vocabulary_only")
    assert "16 tags (4 unseen) listed in coco/lists/tags.txt" in done.stdout, done.stdout
    data = (
        "--train_source=coco/annotations/instances_train2014.json",
        "--test_source=coco/annotations/val_17_48.json", "--zsl_test_source=coco/annotations/val_unseen.json",
        "--tags=coco/lists/tags.txt", "--unseen_tags=coco/lists/unseen_tags.txt",
        "--word_vectors=coco/word_vectors.npy", "--word_vector_tags=coco/classes.txt",
    )
    val_images = sorted(os.path.join("coco", "val2014", name) for name in os.listdir(user.path("coco", "val2014")))
    run = flow.user_path(user, "configs/coco.flags", "coco", data, test_images[:3], ["--images=coco/val2014"],
                         val_images, "tennis racket")
    train_log = user.output("sdl_keras.train")
    assert "COCO train: all 32 image files present" in train_log
    # The restricted files (val_17_48.json, val_unseen.json) name only their own images.
    assert f"COCO test: all {len(test_images)} image files present" in user.output("sdl_keras.evaluate")
    config = run.config()
    assert config.data.dataset == "coco" and not config.data.allow_pickle
    assert config.model.augment and config.model.augmentation == "official" and config.model.cutout_rate is None
    assert config.model.num_rows == 2 and config.loss.reg_weight == 0.3
    assert config.optimizer.learning_rate == 1e-4 and config.optimizer.weight_decay == 3e-4
    assert config.evaluation.ks == (3,) and config.evaluation.validation_fraction == 0
    vocabulary = run.vocabulary()
    assert vocabulary.tags == SEEN + UNSEEN and vocabulary.unseen_tags == list(UNSEEN)


if __name__ == "__main__":
    testing.run(__file__)
