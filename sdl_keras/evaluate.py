"""Evaluate a run zero-shot: `python -m sdl_keras.evaluate --run_dir=runs/demo`.

Prints the paper's Table 1 layout (ZSL and GZSL rows, P/R/F1@K and mAP) for the
model and for random scores, then a second table of the probabilities: CP/CR/CF1 and
OP/OR/OF1 at the calibration's thresholds and the expected calibration errors (an
uncalibrated run: sigmoid(score), said so). Writes the figures as JSON
(RUN_DIR/results.json) and the test split's reliability diagrams to RUN_DIR/logs/test.
"""

from absl import flags

from sdl_keras import cli

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("run_dir", None, "Run directory written by sdl_keras.train.")
    flags.DEFINE_string("dataset", None, "Reader name, or tfrecord (records of pipelines.to_tfrecord); default: "
                        "the run's.")
    flags.DEFINE_string("test_source", None, "Test data (tfrecord: the records folder, its test shards); default: "
                        "the run's test_source.")
    flags.DEFINE_string("zsl_test_source", None, "Separate ZSL test data (the official COCO val_unseen.json); "
                        "default: the run's zsl_test_source, else the ZSL figures come from the test source.")
    flags.DEFINE_list("eval_ks", None, "K values of P/R/F1@K; default: the run's.")
    flags.DEFINE_integer("eval_batch_size", 64, "Images per inference batch.")
    flags.DEFINE_enum("empty_tags", None, ["zero", "skip"], "How mAP counts a tag without a positive test image: "
                      "zero (AP 0, the official evaluation) or skip (left out); default: the run's "
                      "(evaluation.empty_tags). Written to the results' settings.")
    cli.define_tag_encoder_flags(
        "Embed the run's tags anew with this keras_hub text encoder preset (name or directory; its size must be "
        "the run's d) and score with those vectors, uncalibrated; default: the run's own vectors.",
        "Prompt templates ('|'-separated) to embed the run's tags anew with (--tag_encoder, default the run's: "
        "a prompt ablation); default: the run's own vectors.")
    flags.DEFINE_string("results", None, "JSON output; default: RUN_DIR/results.json.")
    flags.mark_flag_as_required("run_dir")


def main(argv):
    cli.no_arguments(argv)
    from sdl_keras import evaluation, inference
    from sdl_keras.run_dir import RunDirectory

    ks = [int(k) for k in FLAGS.eval_ks] if FLAGS.eval_ks else None
    results = inference.evaluate_run(FLAGS.run_dir, FLAGS.dataset, FLAGS.test_source, ks,
                                     batch_size=FLAGS.eval_batch_size, empty_tags=FLAGS.empty_tags,
                                     zsl_source=FLAGS.zsl_test_source, reliability_logs=True,
                                     tag_encoder=FLAGS.tag_encoder, tag_templates=FLAGS.tag_templates,
                                     tag_encoder_cache=FLAGS.tag_encoder_cache)
    ks = sorted({int(key.split("@")[1]) for key in results["model"] if "@" in key})
    print()
    print(evaluation.format_table({"SDL (this run)": results["model"], "random scores": results["random"]}, ks))
    ratio = results["model"]["zsl/mAP"] / max(results["random"]["zsl/mAP"], 1e-9)
    print(f"\nZSL mAP is {ratio:.1f}x the random ranker's.\n")
    probabilities = results["probabilities"]
    if not probabilities["calibrated"]:
        print(f"Uncalibrated run: {probabilities['uncalibrated']}; probabilities are sigmoid(score).")
    print(evaluation.format_threshold_table(probabilities["thresholds"]))
    print()
    print(evaluation.format_calibration_table(probabilities["ece"], inference.ECE_TOP_K))
    run = RunDirectory(FLAGS.run_dir)
    run.write_results(results, FLAGS.results)
    print(f"Results written to {FLAGS.results or run.results_path}")


def run():
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()
