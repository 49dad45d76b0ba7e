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

Several machines: run the same command on each, with TF_CONFIG saying who is
who ({"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type":
"worker", "index": 0}}). Training is synchronous; --batch-size is then the
batch of all workers together (each takes --batch-size / workers, rows i::N of
the list); worker 0 writes --snapshot-dir (shared storage). See docs/distributed.md.
Progress lines and TensorBoard logs (in the same directory) show the
segmentation loss and the weight-decay term (l2) apart, with accuracy,
learning rate and image/label/prediction triplets.

Example (fine-tune the ImageNet init model converted by convert.py):
  python train.py --data-dir VOCdevkit/VOC2012 --data-list dataset/train.txt \\
      --restore-from init.npz --not-restore-last --random-scale --random-mirror
"""
import argparse
import dataclasses

from deeplab_resnet import kernels

# Before TensorFlow's import, which fixes the kernel family for the process.
kernels.choose("train")

from deeplab_resnet import cli, distributed, training  # noqa: E402
from deeplab_resnet.model import ModelConfig  # noqa: E402
from deeplab_resnet.training.towers import check_batch_split  # noqa: E402

# DeepLab-v2's recipe, as training.TrainConfig's parts hold it.
_RECIPE = training.TrainConfig()
DEFAULTS = argparse.Namespace(**{f.name: getattr(part, f.name)
                                 for part in vars(_RECIPE).values()
                                 for f in dataclasses.fields(part)})


def get_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_flags(parser, data_list=DEFAULTS.data_list)
    cli.add_model_flags(parser, restore_required=False)
    parser.add_argument("--batch-size", type=cli.positive_int, default=DEFAULTS.batch_size,
                        help="Images per batch, all --num-gpus devices and all "
                             "TF_CONFIG workers together: each worker takes "
                             "batch-size / workers (default: %(default)s).")
    parser.add_argument("--num-gpus", type=cli.positive_int, default=DEFAULTS.num_gpus,
                        help="Devices to split each batch over, one tower each; "
                             "--batch-size must be a multiple (default: "
                             "%(default)s).")
    parser.add_argument("--tower-device", choices=("gpu", "cpu"),
                        default=DEFAULTS.tower_device,
                        help="Device type of the --num-gpus towers; 'cpu' "
                             "splits the CPU into logical devices, to try the "
                             "multi-device path without GPUs (no speed-up) "
                             "(default: %(default)s).")
    parser.add_argument("--grad-update-every", type=cli.positive_int,
                        default=DEFAULTS.grad_update_every,
                        help="Batches whose gradients are accumulated into one "
                             "update, as Caffe's iter_size: the effective batch "
                             "is batch-size x this (default: %(default)s).")
    parser.add_argument("--input-size", type=cli.size,
                        default="%d,%d" % DEFAULTS.input_size,
                        help="HEIGHT,WIDTH of the random training crops "
                             "(default: %(default)s).")
    parser.add_argument("--learning-rate", type=cli.non_negative_float, default=DEFAULTS.learning_rate,
                        help="Base learning rate of the poly schedule "
                             "(default: %(default)s).")
    parser.add_argument("--momentum", type=cli.non_negative_float, default=DEFAULTS.momentum,
                        help="SGD momentum (default: %(default)s).")
    parser.add_argument("--num-steps", type=cli.positive_int, default=DEFAULTS.num_steps,
                        help="Updates to train for, counted across resumes "
                             "(default: %(default)s).")
    parser.add_argument("--power", type=cli.non_negative_float, default=DEFAULTS.power,
                        help="Exponent of the poly learning-rate decay "
                             "(default: %(default)s).")
    parser.add_argument("--random-mirror", action="store_true",
                        help="Randomly mirror inputs left-right (default: off).")
    parser.add_argument("--random-scale", action="store_true",
                        help="Randomly scale inputs by a factor uniform in 0.5-1.5, "
                             "as the original TensorFlow port (default: off).")
    parser.add_argument("--scale-set", type=cli.scales, default=None, metavar="S,S,..",
                        help="Randomly scale each input by one of these factors, "
                             "each as likely; Caffe DeepLab-v2 used "
                             "0.5,0.75,1,1.25,1.5 (default: none).")
    parser.add_argument("--train-scales", type=cli.scales, default="1",
                        metavar="S,S,..",
                        help="Multi-scale training (DeepLab-v2's MSC, the original "
                             "project's train_msc.py): e.g. 1,0.75,0.5 runs the "
                             "network with shared weights on each scaled copy of "
                             "the batch and sums one loss per scale and one on "
                             "their max-fusion (default: %(default)s, one scale).")
    parser.add_argument("--bf16", action="store_true",
                        help="Mixed-precision training: convolutions and the "
                             "activations between them in bfloat16; weights, "
                             "momentum, checkpoints, BatchNorm statistics, the "
                             "loss and the update in float32 (a bf16 run resumes "
                             "as float32 and back). No loss scaling is needed "
                             "(bfloat16 has float32's exponent range). Fast on "
                             "CPUs with AVX512_BF16/AMX and on GPUs (default: off).")
    parser.add_argument("--train-last-only", action="store_true",
                        help="Train the classifier fc1_voc12_* alone, the body "
                             "left bit-identical (the original fine_tune.py); a "
                             "step costs little more than a forward pass "
                             "(default: off).")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="Log an image or label that cannot be read and go on "
                             "with the next pair, instead of saving a snapshot and "
                             "stopping (default: off, stop so that it gets fixed).")
    parser.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                        help="Read the list in its order, batches included, "
                             "instead of shuffling it every pass, e.g. to "
                             "reproduce a run exactly (default: shuffle).")
    parser.add_argument("--random-seed", type=int, default=DEFAULTS.random_seed,
                        help="Graph-level random seed (default: %(default)s).")
    parser.add_argument("--reader-threads", type=cli.positive_int,
                        default=DEFAULTS.reader_threads,
                        help="Threads reading, decoding and augmenting the images. "
                             "With 1 the batches (their order and their random "
                             "crops, scales and mirroring) follow from "
                             "--random-seed alone, so that a run repeats on the "
                             "same machine (default: %(default)s).")
    parser.add_argument("--not-restore-last", action="store_true",
                        help="Do not restore the classifier (fc1_voc12*) from "
                             "--restore-from, e.g. from the ImageNet init model "
                             "or another dataset (default: off).")
    parser.add_argument("--is-training", action="store_true",
                        help="Normalise with batch statistics and update "
                             "BatchNorm's moving averages; off, BatchNorm is "
                             "frozen as in DeepLab (default: off).")
    parser.add_argument("--weight-decay", type=cli.non_negative_float, default=DEFAULTS.weight_decay,
                        help="L2 regularisation of convolution weights "
                             "(default: %(default)s).")
    parser.add_argument("--snapshot-dir", type=cli.output_directory, default=DEFAULTS.snapshot_dir,
                        help="Where snapshots, model_config.json and TensorBoard "
                             "logs go; a run resumes from the last snapshot here "
                             "(default: %(default)s).")
    parser.add_argument("--save-pred-every", type=cli.positive_int,
                        default=DEFAULTS.save_pred_every,
                        help="Snapshot and image summaries every this many steps "
                             "(default: %(default)s).")
    parser.add_argument("--save-num-images", type=cli.non_negative_int, default=DEFAULTS.save_num_images,
                        help="Image/label/prediction triplets per TensorBoard "
                             "image summary, 0 for none (default: %(default)s).")
    parser.add_argument("--keep-checkpoints", type=cli.non_negative_int,
                        default=DEFAULTS.keep_checkpoints,
                        help="Snapshots kept, oldest deleted first; 0 keeps all, "
                             "a negative count is refused (default: %(default)s).")
    parser.add_argument("--log-every", type=cli.positive_int, default=DEFAULTS.log_every,
                        help="Progress line every this many steps "
                             "(default: %(default)s).")
    parser.add_argument("--val-list", default=None, metavar="FILE",
                        help="Score the weights on this list every --val-every "
                             "steps, as evaluate.py does (full image size); mIoU "
                             "and per-class IoU go to the log and TensorBoard, "
                             "and the best snapshot is kept in "
                             "<snapshot-dir>/best/ (default: no validation).")
    parser.add_argument("--val-data-dir", default=None,
                        help="Root of --val-list's paths (default: --data-dir).")
    parser.add_argument("--val-every", type=cli.positive_int, default=DEFAULTS.val_every,
                        help="Steps between validations; each also saves a "
                             "snapshot (default: %(default)s).")
    parser.add_argument("--val-images", type=cli.positive_int, default=None,
                        help="Validate on the first N images of --val-list "
                             "(default: all).")
    parser.add_argument("--blocks", type=cli.int_list,
                        default=",".join(map(str, DEFAULTS.model.blocks)),
                        help="Bottleneck blocks in res2..res5; smaller for demos "
                             "and tests (default: %(default)s, ResNet-101).")
    parser.add_argument("--base-depth", type=cli.positive_int,
                        default=DEFAULTS.model.base_depth,
                        help="Inner width of res2's bottlenecks, doubled per "
                             "stage (default: %(default)s).")
    parser.add_argument("--aspp-rates", type=cli.int_list,
                        default=",".join(map(str, DEFAULTS.model.aspp_rates)),
                        help="Dilation of each ASPP branch (default: %(default)s).")
    parser.add_argument("--step-timeout", type=cli.positive_float, default=DEFAULTS.step_timeout,
                        help="Several workers: seconds a worker waits for the "
                             "others within a step; more than the chief's "
                             "snapshot and validation take (default: "
                             "%(default)s).")
    parser.add_argument("--startup-timeout", type=cli.positive_float,
                        default=DEFAULTS.startup_timeout,
                        help="Several workers: seconds for all of them to "
                             "start and join (default: %(default)s).")
    parser.add_argument("--peer-timeout", type=cli.positive_float, default=DEFAULTS.peer_timeout,
                        help="Several workers: a worker that answers no probe "
                             "for this long is lost and the others stop; more "
                             "than the longest op (default: %(default)s).")
    cli.add_runtime_flags(parser)
    args = parser.parse_args(argv)
    if args.scale_set and args.random_scale:
        parser.error("--scale-set and --random-scale are two ways of scaling; "
                     "give one.")
    try:
        check_batch_split(args.batch_size, args.num_gpus, "--batch-size %d" % args.batch_size,
                          "--num-gpus %d" % args.num_gpus)
    except ValueError as err:
        parser.error(str(err))
    return args


def train_config(args):
    """The ``training.TrainConfig`` of the parsed flags, each to its part."""
    values = {k: v for k, v in vars(args).items() if hasattr(DEFAULTS, k)}
    values["model"] = ModelConfig(args.blocks, args.base_depth, args.aspp_rates)
    return training.TrainConfig.from_fields(**values)


def main(argv=None):
    args = get_arguments(argv)
    cli.setup_logging()
    return training.train(train_config(args), task=distributed.task_from_env())


if __name__ == "__main__":
    cli.run_main(main)
