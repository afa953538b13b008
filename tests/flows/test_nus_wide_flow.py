"""NUS-WIDE as a user runs it, one process per command: configs/nus_wide.flags on a fixture
in the official layout (placeholder copies and a missing image included) with the
ZS-SDL-style tag lists and .npy vectors, through train, evaluate, export, serving, tag and
search."""

from tests import testing
from tests.datasets import make_nus_wide, nus_wide_image, write_nus_wide_lists
from tests.flows import flow

SEEN = ("beach", "bird", "boat", "bridge", "car", "city", "flower", "house", "lake", "mountain", "night", "road",
        "snow", "street", "tree")
CONCEPTS = ("animal", "clouds", "dog", "sky", "sunset", "water")
NUM_TRAIN, NUM_TEST = 43, 16  # train images 0-10 are placeholders or missing: 32 remain


def test_nus_wide_flags(tmp_path):
    user = flow.Flow(tmp_path)
    _, _, _, names = make_nus_wide(user.path("NUS-WIDE"), sorted(SEEN + CONCEPTS), list(CONCEPTS),
                                   num_train=NUM_TRAIN, num_test=NUM_TEST, density=0.25, image_size=(40, 30))
    write_nus_wide_lists(user.path("nus_wide"), user.path("NUS-WIDE"))
    data = (
        "--train_source=NUS-WIDE", "--test_source=NUS-WIDE", "--tags=nus_wide/tags.txt",
        "--unseen_tags=nus_wide/unseen_tags.txt", "--word_vectors=nus_wide/word_vectors.npy",
    )
    test_images = [nus_wide_image("NUS-WIDE", name) for name in names[NUM_TRAIN:]]
    run = flow.user_path(user, "configs/nus_wide.flags", "nus_wide", data, test_images[:3], test_images,
                         test_images, "sunset")
    assert "NUS-WIDE train: skipped 11 of 43 image files" in user.output("sdl_keras.train")
    config = run.config()
    assert config.data.dataset == "nus_wide" and not config.data.allow_pickle
    assert config.model.augment and config.model.augmentation == "official" and config.model.cutout_rate is None
    assert config.model.num_rows == 7 and config.loss.reg_weight == 0.3
    assert config.optimizer.learning_rate == 1e-4 and config.optimizer.weight_decay == 3e-4
    assert config.evaluation.ks == (3, 5)
    vocabulary = run.vocabulary()
    assert len(vocabulary) == len(SEEN + CONCEPTS) and vocabulary.unseen_tags == sorted(CONCEPTS)


if __name__ == "__main__":
    testing.run(__file__)
