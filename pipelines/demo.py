"""Writes the synthetic demo dataset: `python -m pipelines.demo --flagfile=configs/demo_data.flags`.

SYNTHETIC: the smoke test of the whole flow, not a benchmark (pipelines/readers/demo.py).
"""

from absl import flags

from pipelines import command

FLAGS = flags.FLAGS


def define_flags():
    from pipelines.readers.demo import DemoConfig

    flags.DEFINE_string("out_dir", "data/demo", "Folder to write the demo dataset to.")
    flags.DEFINE_integer("num_train", DemoConfig.num_train, "Training images.")
    flags.DEFINE_integer("num_test", DemoConfig.num_test, "Test images.")
    flags.DEFINE_integer("num_validation", DemoConfig.num_validation, "Validation images, drawn like the test "
                         "images and labelled for the seen tags only (0 = no validation split).")
    flags.DEFINE_integer("image_size", DemoConfig.image_size, "Image side in pixels.")
    flags.DEFINE_integer("max_objects", DemoConfig.max_objects, "Objects per image, at most.")
    flags.DEFINE_integer("embed_dim", DemoConfig.embed_dim, "Word-vector size.")
    flags.DEFINE_integer("seed", DemoConfig.seed, "Random seed: the dataset is a function of it.")


def main(argv):
    command.no_arguments(argv)
    from pipelines.progress import Progress
    from pipelines.readers.demo import DemoConfig, make_demo_dataset

    config = DemoConfig(FLAGS.num_train, FLAGS.num_test, FLAGS.image_size, FLAGS.max_objects, FLAGS.embed_dim,
                        FLAGS.seed, FLAGS.num_validation)
    bars = {}

    def progress(split, done, total):
        bars.setdefault(split, Progress(total, f"{split} image")).update(done)

    files = make_demo_dataset(FLAGS.out_dir, config, progress)
    print("Demo dataset (synthetic) written:", ", ".join(files.values()))


def run():
    command.run(main, define_flags)


if __name__ == "__main__":
    run()
