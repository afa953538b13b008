"""COCO's test set restricted both ways: the full instances file by the zero-shot rule and
a file of image ids (the paper's 6,608), or the official COCO-format files val_17_48.json
(GZSL) and val_unseen.json (ZSL), every image they annotate."""

import os

import numpy as np
import pytest

from pipelines.readers import load_split
from tests import testing
from tests.pipelines.readers.coco_fixtures import UNSEEN, write_coco_val


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco"))
    return root, *write_coco_val(root)


def test_the_full_instances_file_by_the_rule_and_an_image_id_file(coco):
    root, paths, tags = coco
    by_rule = load_split("coco", paths["instances"], "test", tags, UNSEEN)
    assert by_rule.ids == ["11", "12", "15"]  # a seen and an unseen object each
    ids_file = os.path.join(root, "paper_test_ids.txt")
    with open(ids_file, "w") as f:
        f.write("15\n11\n")
    chosen = load_split("coco", paths["instances"], "test", tags, UNSEEN, image_ids=ids_file)
    assert chosen.ids == ["11", "15"] and chosen.paths[0].endswith(os.path.join("val2014", "COCO_val2014_000000000011.jpg"))
    np.testing.assert_array_equal(chosen.labels, by_rule.labels[[0, 2]])
    with open(ids_file, "a") as f:
        f.write("13\n")  # seen objects only: not a test image
    with pytest.raises(KeyError, match=r"paper_test_ids.txt: 1 of its 3 image ids are not among .*\['13'\]"):
        load_split("coco", paths["instances"], "test", tags, UNSEEN, image_ids=ids_file)


def test_the_official_restricted_files_give_every_annotated_image(coco):
    root, paths, tags = coco
    gzsl = load_split("coco", paths["val_17_48"], "test", tags, UNSEEN, test_files="restricted")
    zsl = load_split("coco", paths["val_unseen"], "test", tags, UNSEEN, test_files="restricted")
    assert gzsl.ids == ["11", "12", "15"] and zsl.ids == ["11", "12", "14", "15"]
    # Images are found by their COCO names (COCO_val2014_* -> ROOT/val2014), whatever the file's name.
    assert all(os.path.exists(p) and os.sep + "val2014" + os.sep in p for p in gzsl.paths + zsl.paths)
    column = {t: i for i, t in enumerate(tags)}
    assert zsl.labels[2, column["dog"]] == 1 and zsl.labels[2, column["cup"]] == 1
    assert zsl.labels[:, [column[t] for t in tags if t not in UNSEEN]].sum() == 0  # only unseen objects there
    assert gzsl.labels[1].tolist() == [0, 1, 0, 0, 1]  # image 12: car and cup; the traffic light is no tag
    # The zero-shot rule on the ZSL file would find no image with a seen object.
    assert len(load_split("coco", paths["val_unseen"], "test", tags, UNSEEN)) == 0
    with pytest.raises(ValueError, match="takes no option"):
        load_split("manifest", paths["val_unseen"], "test", tags, UNSEEN, test_files="restricted")


if __name__ == "__main__":
    testing.run(__file__)
