"""One split of any dataset as batches of (uint8 images, labels over the vocabulary):
read by a pipelines.readers reader, or streamed from TFRecords with dataset="tfrecord"."""

from pipelines.files import image_label_dataset
from pipelines.readers import TFRECORD, load_split
from pipelines.tfrecord import records


def split_batches(dataset, source, split, tags, unseen_tags, image_size, batch_size, crop="none",
                  decode_mode="fast", image_ids=None, **options):
    """(batches of (images (B, S, S, 3) uint8, labels (B, C) over `tags`), number of images)
    of one split, in order, one pass. TFRecords' label columns must be `tags`. `image_ids`
    and `options` go to the reader (`pipelines.readers.load_split`)."""
    if dataset == TFRECORD:
        if image_ids is not None or options:
            raise ValueError("TFRecord splits are read whole: image ids and reader options apply to a reader's "
                             "files (convert only the images wanted).")
        record_set = records.open_record_set(source, split)
        records.check_vocabulary(record_set, tags)
        batches = records.evaluation_batches(record_set, image_size, batch_size, crop, decode_mode)
        return batches, record_set.num_examples
    images = load_split(dataset, source, split, tags, unseen_tags, image_ids, **options)
    if not len(images):
        raise ValueError(f"{source}: no {split} images.")
    batches = image_label_dataset(images.paths, images.labels, image_size, batch_size, crop=crop,
                                  decode_mode=decode_mode)
    return batches, len(images)
