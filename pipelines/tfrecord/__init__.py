"""TFRecord shards of (encoded image, label row, image id): the record format (`format`),
the resumable converter behind `python -m pipelines.to_tfrecord` (`convert`), and reading
shards for training and evaluation (`records`)."""
