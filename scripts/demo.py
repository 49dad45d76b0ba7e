"""The embedded default, end to end: data, training, evaluation, inference.

No weights or datasets can be downloaded, so the demo makes its own: a
synthetic VOC-layout dataset (dataset/make_demo.py: five classes of shapes on
textured backgrounds), then runs the real scripts on it with a small DeepLab
configuration — the same code path as ResNet-101 with one bottleneck per
stage and narrow layers, trained from scratch with batch statistics:

  train.py -> evaluate.py (prints the val mIoU) -> inference.py (masks)

Takes about 5 minutes on 2 CPU cores. Rerunning resumes or reuses what is
already there. Run it through scripts/demo.sh, which sets up the
environment first.
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small DeepLab: one bottleneck per stage, base width 8, four ASPP rates.
MODEL_FLAGS = ["--num-classes", "5", "--blocks", "1,1,1,1", "--base-depth", "8",
               "--aspp-rates", "1,2,3,4"]
# From scratch, so BatchNorm learns its statistics (--is-training). 2000
# steps let its moving averages (momentum 0.999, Caffe's) settle. One reader
# thread: the run repeats on one machine (the same batches from the seed).
TRAIN_FLAGS = ["--input-size", "96,96", "--batch-size", "8",
               "--learning-rate", "0.01", "--is-training", "--random-mirror",
               "--num-steps", "2000", "--save-pred-every", "500",
               "--log-every", "100", "--reader-threads", "1"]
INFERENCE_IMAGES = ["val_00000.jpg", "val_00001.jpg", "val_00002.jpg"]


def run(script, *args):
    command = [sys.executable, os.path.join(ROOT, script)] + list(args)
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def joined_train_flags(argv):
    """``--train-flags --bf16`` as ``--train-flags=--bf16``: argparse takes a
    lone value that starts with '--' for an option and refuses it."""
    argv = list(argv)
    for i, arg in enumerate(argv[:-1]):
        if arg == "--train-flags":
            argv[i:i + 2] = ["--train-flags=" + argv[i + 1]]
            break
    return argv


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-flags", default="",
                        help="Extra train.py flags, e.g. '--train-scales 1,0.75,0.5' "
                             "for DeepLab-v2's multi-scale training or '--bf16' "
                             "(default: none).")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "demo"),
                        help="Where the dataset, snapshots and outputs go "
                             "(default: demo/ in the repository).")
    args = parser.parse_args(joined_train_flags(sys.argv[1:]))
    data = os.path.join(args.output_dir, "data")
    snapshots = os.path.join(args.output_dir, "snapshots")
    run("dataset/make_demo.py", "--output-dir", data)
    run("train.py", "--data-dir", data,
        "--data-list", os.path.join(data, "train.txt"),
        "--snapshot-dir", snapshots, *(MODEL_FLAGS + TRAIN_FLAGS + args.train_flags.split()))
    run("evaluate.py", "--data-dir", data,
        "--data-list", os.path.join(data, "val.txt"),
        "--restore-from", snapshots, "--num-classes", "5",
        "--class-names", os.path.join(data, "classes.txt"),
        "--save-dir", os.path.join(args.output_dir, "val_predictions"))
    run("inference.py", *[os.path.join(data, "JPEGImages", name)
                          for name in INFERENCE_IMAGES],
        "--model-weights", snapshots, "--num-classes", "5", "--overlay",
        "--save-dir", os.path.join(args.output_dir, "inference"))
    print("Demo finished: val predictions in %s, masks and overlays in %s."
          % (os.path.join(args.output_dir, "val_predictions"),
             os.path.join(args.output_dir, "inference")))


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as err:
        sys.exit(err.returncode)
