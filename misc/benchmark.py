"""Measure DeepLab-v2's speed and memory on this machine, in one run.

Prints a table (or JSON with --json) of the parts chosen with --parts, and
checks the project's speed and memory targets against the figures. Each
part lives in a module of misc/benchmarks/ (its docstring says what it
measures and how); misc/benchmarks/parts.py is the table of them.

Weights are random (He-initialised): speed does not depend on their values.
Every input is generated unless --voc-sample gives the CRF a real photo, so
the benchmark runs on a plain clone. Ratios are only meaningful within one
run: machines are shared, so compare figures printed together, not across
runs. --trace-dir writes a Chrome trace (chrome://tracing) of one inference
run per size and dtype and of one training step per variant, and the report
lists where the time goes by op type.

Example (quick): python misc/benchmark.py --parts peak,inference --sizes 321
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run as `python misc/benchmark.py` without installing the package; the
# parts' processes (spawned) get the same path.
sys.path.insert(0, ROOT)

# No TensorFlow at module level: CRF worker processes re-import this script.
from deeplab_resnet import cli, files, kernels  # noqa: E402
from misc.benchmarks import options, parts  # noqa: E402

# The network forward runs here with inference's kernels; the training steps
# run in processes of their own with training's (misc/benchmarks/train.py).
# Those are spawned, and a spawned process imports this script again as
# __mp_main__: there the job its parent gave it stands (declaring inference
# again made it assume frozen weights, and Trainer refused to build).
if __name__ != "__mp_main__":
    kernels.choose("inference")


def get_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__ + "\nparts:\n" + parts.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=parts.parse_parts, default=",".join(parts.NAMES),
                        help="What to measure, comma-separated; --help lists what "
                             "each part measures (default: %(default)s).")
    parser.add_argument("--sizes", type=options.parse_sizes, default="321,513",
                        help="Inference sizes: N for NxN or HxW, comma-separated "
                             "(default: %(default)s).")
    parser.add_argument("--dtypes", type=parse_dtypes, default="fp32,bf16",
                        help="Dtypes of the matmul peak and the bare network's "
                             "inference, comma-separated (default: %(default)s).")
    cli.add_num_classes_flag(parser)
    parser.add_argument("--repeats", type=cli.positive_int, default=5,
                        help="Timed runs per inference/CRF figure; the median is "
                             "reported (default: %(default)s).")
    parser.add_argument("--eval-images", type=cli.positive_int, default=10,
                        help="Generated 500x375 images evaluate.py runs on "
                             "(default: %(default)s).")
    parser.add_argument("--train-batch", type=cli.positive_int, default=10,
                        help="Batch of the training step (default: %(default)s, "
                             "train.py's).")
    parser.add_argument("--train-size", type=cli.positive_int, default=321,
                        help="Side of the training crops (default: %(default)s).")
    parser.add_argument("--grad-update-every", type=cli.positive_int, default=2,
                        help="Also time --train-batch split into this many "
                             "accumulated batches; 1 to skip (default: %(default)s).")
    parser.add_argument("--train-variants", type=parse_variants, default="fp32,bf16",
                        help="Training variants to time: %s (default: "
                             "%%(default)s)." % ",".join(options.TRAIN_VARIANTS))
    parser.add_argument("--train-steps", type=cli.positive_int, default=2,
                        help="Timed training steps after one warm-up step "
                             "(default: %(default)s).")
    parser.add_argument("--crf-large-size", type=options.parse_large_size,
                        default="1500x2000",
                        help="HxW (or N for NxN) of the large image whose CRF "
                             "peak memory and time are measured besides 500x375's "
                             "(the default is a 2000x1500 photo, where pydensecrf "
                             "takes ~30-60 s); 0 to skip (default: %(default)s).")
    parser.add_argument("--crf-eval-images", type=int, default=10,
                        help="Generated 500x375 images evaluate.py runs on, "
                             "without the CRF and with each backend's, for each "
                             "dtype; its s/image is timed from the first result to "
                             "the last (with CRF workers low by at most one network "
                             "step / (images - 1): more come closer); 0 to skip "
                             "(default: %(default)s).")
    parser.add_argument("--voc-sample", default=None, metavar="DIR",
                        help="A directory with a photo NAME.jpg and its label "
                             "NAME.png (the first such pair is used), for the CRF "
                             "part: its timings, and beside the demo's images in "
                             "what pruning does to mIoU (default: a generated "
                             "photo-like image, and the demo's images alone).")
    parser.add_argument("--trace-dir", default=None,
                        help="Write Chrome traces of one inference run per size "
                             "and dtype, and of one training step per "
                             "--train-variants, here; the table then lists the "
                             "op types the time goes to (default: none).")
    parser.add_argument("--json", action="store_true",
                        help="Print JSON instead of the table (default: off).")
    parser.add_argument("--save-json", default=None,
                        help="Also write the JSON report to this file "
                             "(default: not written).")
    parser.add_argument("--record", nargs="?", const="results", default=None, metavar="DIR",
                        help="Also write a record of the run into DIR (default DIR: "
                             "results): the report with the machine, the software, "
                             "the git commit, the date, the load and the command "
                             "(misc/benchmarks/records.py; README and docs/ tables "
                             "are generated from records) (default: no record).")
    cli.add_runtime_flags(parser)
    args = parser.parse_args(argv)
    if args.eval_images < 2 and "evaluate" in args.parts:
        parser.error("--eval-images must be at least 2 (the first is warm-up).")
    if args.crf_eval_images < 0 or args.crf_eval_images == 1:
        parser.error("--crf-eval-images must be 0 (skip) or at least 2 (the loop is "
                     "timed from the first result to the last).")
    return args


def parse_dtypes(text):
    return parts.parse_choices(text, ("fp32", "bf16"), "dtypes")


def parse_variants(text):
    return parts.parse_choices(text, options.TRAIN_VARIANTS, "variants")


def main(argv=None):
    args = get_arguments(argv)
    if args.trace_dir:
        os.makedirs(args.trace_dir, exist_ok=True)
    from misc.benchmarks import records, report, runner
    load_before, command = records.load_average(), records.command_line()
    result = runner.measure(options.Settings.from_args(args))
    # numpy scalars (np.float64, np.bool_) as their Python values.
    text = json.dumps(result, indent=2, default=lambda value: value.item())
    if args.save_json:
        files.write_bytes(args.save_json, text + "\n", mode="w")
    print(text if args.json else report.format_table(result))
    if args.record:
        peer = (result.get("peer") or {}).get("torch")
        path = records.write(records.make("benchmark", json.loads(text), command, load_before,
                                          software={"torch": peer} if peer else None),
                             args.record)
        print("record: %s" % path)
    return 0


if __name__ == "__main__":
    cli.setup_logging()
    cli.run_main(main)
