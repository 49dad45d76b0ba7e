"""Train DeepLab-v2 (ResNet-101 + ASPP) on a list-file dataset such as PASCAL VOC.

DeepLab-v2's Caffe recipe: random crops of --input-size, poly learning rate,
SGD with momentum, 10x/20x learning rate on the classifier's weights/biases,
weight decay on convolution weights, frozen BatchNorm (unless --is-training).
--grad-update-every k accumulates k batches per update (Caffe's iter_size).
--num-gpus N splits each batch over N GPUs (one tower each, variables shared
on the CPU, gradients summed): with frozen BatchNorm, the update of one device
taking the whole batch.

Snapshots go to --snapshot-dir with model_config.json (the architecture, so
evaluate.py and inference.py rebuild the same net). Rerunning the same command
resumes from the last snapshot there, global step, momentum and learning-rate
schedule included; Ctrl-C (or SIGTERM) saves a snapshot and stops.
Progress lines and TensorBoard logs (in the same directory) show the
segmentation loss and the weight-decay term (l2) apart, with accuracy,
learning rate and image/label/prediction triplets.

Example (fine-tune the ImageNet init model converted by convert.py):
  python train.py --data-dir VOCdevkit/VOC2012 --data-list dataset/train.txt \\
      --restore-from init.npz --not-restore-last --random-scale --random-mirror
"""
import argparse

import deeplab_resnet  # noqa: F401  (graph mode)
from deeplab_resnet import training, utils
from deeplab_resnet.model import ASPP_RATES, RESNET101_BLOCKS

BATCH_SIZE = 10
DATA_LIST_PATH = "dataset/train.txt"
INPUT_SIZE = "321,321"
LEARNING_RATE = 2.5e-4
MOMENTUM = 0.9
NUM_STEPS = 20001
POWER = 0.9
RANDOM_SEED = 1234
SAVE_NUM_IMAGES = 2
SAVE_PRED_EVERY = 1000
SNAPSHOT_DIR = "snapshots"
WEIGHT_DECAY = 0.0005
GRAD_UPDATE_EVERY = 1
KEEP_CHECKPOINTS = 5
LOG_EVERY = 1
NUM_GPUS = 1
TOWER_DEVICE = "gpu"
BASE_DEPTH = 64


def int_list(text):
    """'3,4,23,3' -> (3, 4, 23, 3)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers such "
                                         "as 3,4,23,3; got %r" % text)


def size(text):
    try:
        return utils.parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err))


def get_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    utils.add_data_flags(parser, data_list=DATA_LIST_PATH)
    utils.add_model_flags(parser, restore_required=False)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help="Images per batch, all --num-gpus devices "
                             "together (default: %(default)s).")
    parser.add_argument("--num-gpus", type=int, default=NUM_GPUS,
                        help="Devices to split each batch over, one tower each; "
                             "--batch-size must be a multiple (default: "
                             "%(default)s).")
    parser.add_argument("--tower-device", choices=("gpu", "cpu"),
                        default=TOWER_DEVICE,
                        help="Device type of the --num-gpus towers; 'cpu' "
                             "splits the CPU into logical devices, to try the "
                             "multi-device path without GPUs (no speed-up) "
                             "(default: %(default)s).")
    parser.add_argument("--grad-update-every", type=int, default=GRAD_UPDATE_EVERY,
                        help="Batches whose gradients are accumulated into one "
                             "update, as Caffe's iter_size: the effective batch "
                             "is batch-size x this (default: %(default)s).")
    parser.add_argument("--input-size", type=size, default=INPUT_SIZE,
                        help="HEIGHT,WIDTH of the random training crops "
                             "(default: %(default)s).")
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE,
                        help="Base learning rate of the poly schedule "
                             "(default: %(default)s).")
    parser.add_argument("--momentum", type=float, default=MOMENTUM,
                        help="SGD momentum (default: %(default)s).")
    parser.add_argument("--num-steps", type=int, default=NUM_STEPS,
                        help="Updates to train for, counted across resumes "
                             "(default: %(default)s).")
    parser.add_argument("--power", type=float, default=POWER,
                        help="Exponent of the poly learning-rate decay "
                             "(default: %(default)s).")
    parser.add_argument("--random-mirror", action="store_true",
                        help="Randomly mirror inputs left-right (default: off).")
    parser.add_argument("--random-scale", action="store_true",
                        help="Randomly scale inputs by 0.5-1.5 (default: off).")
    parser.add_argument("--random-seed", type=int, default=RANDOM_SEED,
                        help="Graph-level random seed (default: %(default)s).")
    parser.add_argument("--not-restore-last", action="store_true",
                        help="Do not restore the classifier (fc1_voc12*) from "
                             "--restore-from, e.g. from the ImageNet init model "
                             "or another dataset (default: off).")
    parser.add_argument("--is-training", action="store_true",
                        help="Normalise with batch statistics and update "
                             "BatchNorm's moving averages; off, BatchNorm is "
                             "frozen as in DeepLab (default: off).")
    parser.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY,
                        help="L2 regularisation of convolution weights "
                             "(default: %(default)s).")
    parser.add_argument("--snapshot-dir", default=SNAPSHOT_DIR,
                        help="Where snapshots, model_config.json and TensorBoard "
                             "logs go; a run resumes from the last snapshot here "
                             "(default: %(default)s).")
    parser.add_argument("--save-pred-every", type=int, default=SAVE_PRED_EVERY,
                        help="Snapshot and image summaries every this many steps "
                             "(default: %(default)s).")
    parser.add_argument("--save-num-images", type=int, default=SAVE_NUM_IMAGES,
                        help="Image/label/prediction triplets per TensorBoard "
                             "image summary, 0 for none (default: %(default)s).")
    parser.add_argument("--keep-checkpoints", type=int, default=KEEP_CHECKPOINTS,
                        help="Snapshots kept, oldest deleted first; 0 keeps all "
                             "(default: %(default)s).")
    parser.add_argument("--log-every", type=int, default=LOG_EVERY,
                        help="Progress line every this many steps "
                             "(default: %(default)s).")
    parser.add_argument("--blocks", type=int_list,
                        default=",".join(map(str, RESNET101_BLOCKS)),
                        help="Bottleneck blocks in res2..res5; smaller for demos "
                             "and tests (default: %(default)s, ResNet-101).")
    parser.add_argument("--base-depth", type=int, default=BASE_DEPTH,
                        help="Inner width of res2's bottlenecks, doubled per "
                             "stage (default: %(default)s).")
    parser.add_argument("--aspp-rates", type=int_list,
                        default=",".join(map(str, ASPP_RATES)),
                        help="Dilation of each ASPP branch (default: %(default)s).")
    utils.add_runtime_flags(parser)
    args = parser.parse_args(argv)
    for flag in ("batch_size", "num_gpus", "grad_update_every", "num_steps",
                 "save_pred_every", "log_every"):
        if getattr(args, flag) < 1:
            parser.error("--%s must be at least 1." % flag.replace("_", "-"))
    if args.batch_size % args.num_gpus:
        parser.error("--batch-size %d does not split evenly over --num-gpus %d; "
                     "use a multiple of %d, such as %d."
                     % (args.batch_size, args.num_gpus, args.num_gpus,
                        max(args.num_gpus, args.batch_size // args.num_gpus
                            * args.num_gpus)))
    return args


def main(argv=None):
    args = get_arguments(argv)
    utils.setup_logging()
    return training.train(args)


if __name__ == "__main__":
    utils.run_main(main)
