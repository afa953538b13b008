"""One split of any dataset as batches of (uint8 images, labels over the vocabulary):
read by a pipelines.readers reader, or streamed from TFRecords with dataset="tfrecord"."""

from pipelines.files import image_label_dataset
from pipelines.readers import TFRECORD, load_split
from pipelines.tfrecord import records


def split_batches(dataset, source, split, tags, unseen_tags, image_size, batch_size, crop="none"):
    """(batches of (images (B, S, S, 3) uint8, labels (B, C) over `tags`), number of images)
    of one split, in order, one pass. TFRecords' label columns must be `tags`."""
    if dataset == TFRECORD:
        record_set = records.open_record_set(source, split)
        records.check_vocabulary(record_set, tags)
        return records.evaluation_batches(record_set, image_size, batch_size, crop), record_set.num_examples
    images = load_split(dataset, source, split, tags, unseen_tags)
    if not len(images):
        raise ValueError(f"{source}: no {split} images.")
    return image_label_dataset(images.paths, images.labels, image_size, batch_size, crop=crop), len(images)
