"""Evaluate a run zero-shot: `python -m sdl_keras.evaluate --run_dir=runs/demo`.

Prints the paper's Table 1 layout (ZSL and GZSL rows, P/R/F1@K and mAP) for the
model and for random scores, and writes the figures as JSON.
"""

import os

from absl import app, flags

from sdl_keras import cli, evaluation, inference

flags.DEFINE_string("run_dir", None, "Run directory written by sdl_keras.train.")
flags.DEFINE_string("dataset", None, "Reader name, or tfrecord (records of pipelines.to_tfrecord); default: the run's.")
flags.DEFINE_string(
    "test_source", None, "Test data (tfrecord: the records folder, its test shards); default: the run's test_source."
)
flags.DEFINE_list("eval_ks", None, "K values of P/R/F1@K; default: the run's.")
flags.DEFINE_integer("eval_batch_size", 64, "Images per inference batch.")
flags.DEFINE_string("results", None, "JSON output; default: RUN_DIR/results.json.")
flags.mark_flag_as_required("run_dir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.setup_logging()
    ks = [int(k) for k in FLAGS.eval_ks] if FLAGS.eval_ks else None
    results = inference.evaluate_run(
        FLAGS.run_dir, FLAGS.dataset, FLAGS.test_source, ks, batch_size=FLAGS.eval_batch_size
    )
    ks = sorted({int(key.split("@")[1]) for key in results["model"] if "@" in key})
    print()
    print(evaluation.format_table({"SDL (this run)": results["model"], "random scores": results["random"]}, ks))
    ratio = results["model"]["zsl/mAP"] / max(results["random"]["zsl/mAP"], 1e-9)
    print(f"\nZSL mAP is {ratio:.1f}x the random ranker's.")
    path = FLAGS.results or os.path.join(FLAGS.run_dir, "results.json")
    inference.write_results(results, path)
    print(f"Results written to {path}")


if __name__ == "__main__":
    app.run(main)
