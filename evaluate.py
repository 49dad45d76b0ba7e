"""Measure mIoU of a trained DeepLab model on a list-file dataset (e.g. VOC val).

Every image is segmented at its own size, without cropping or padding; the
confusion matrix is accumulated over all pixels whose label is not
--ignore-label, and mean IoU, per-class IoU, pixel accuracy and mean class
accuracy are computed from it. The last line printed is `mIoU 0.xxxx`.

The network's architecture is read from model_config.json beside the
checkpoint (train.py writes it); weights without one (the .npz written by
convert.py) are the published ResNet-101.

Example:
  python evaluate.py --data-dir VOCdevkit/VOC2012 --data-list dataset/val.txt \\
      --restore-from snapshots/ --scales 0.5,0.75,1.0 --flip --crf

Several machines: the same command on each, with the TF_CONFIG of train.py;
each worker scores rows i::N of the list and worker 0 prints the scores of
the summed confusion matrices, as one process scoring the whole list would.
"""
import argparse

# TensorFlow's modules are imported in main(), not here: CRF worker
# processes re-import this script (Python's rule for forkserver children)
# and need numpy only.
from deeplab_resnet import cli, kernels, metrics
from deeplab_resnet.data import label_maps
from deeplab_resnet.data.config import EvalDataConfig

# The kernel family TensorFlow will run, fixed at its import in main().
kernels.choose("inference")


def get_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_flags(parser)
    cli.add_model_flags(parser)
    parser.add_argument("--num-steps", type=cli.positive_int, default=None,
                        help="Images to evaluate, from the top of the list "
                             "(default: the whole list).")
    parser.add_argument("--save-dir", type=cli.output_directory, default=None,
                        help="Write each prediction to <save-dir>/<image name>.png "
                             "as a palette PNG with the VOC colours (pixel value = "
                             "class id) (default: not written).")
    parser.add_argument("--save-confusion", default=None,
                        help="Write the confusion matrix (rows: ground truth, "
                             "columns: prediction) to this .csv or .npy file "
                             "(default: not written).")
    cli.add_class_names_flag(parser)
    cli.add_prediction_flags(parser)
    cli.add_crf_flags(parser)
    cli.add_runtime_flags(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = get_arguments(argv)
    cli.setup_logging()
    names = label_maps.class_names(args.num_classes, args.class_names)
    metrics.check_confusion_path(args.save_confusion)
    if args.save_confusion:
        cli.check_writable_file(args.save_confusion, "--save-confusion")
    crf = cli.crf_stage(args)
    from deeplab_resnet import distributed
    from deeplab_resnet.evaluation.evaluate import EvalRuntime, evaluate
    task = distributed.task_from_env()
    data = EvalDataConfig(args.data_dir, args.data_list, num_classes=args.num_classes,
                          ignore_label=args.ignore_label, label_map=args.label_map,
                          num_images=args.num_steps)
    confusion = evaluate(
        data, args.restore_from, predict=cli.predict_config(args),
        crf=crf,
        runtime=EvalRuntime(*cli.threads(args)), save_dir=args.save_dir, task=task)
    if task is not None and not task.is_chief:
        return 0
    if args.save_confusion:
        metrics.save_confusion(confusion, args.save_confusion)
    scores = metrics.segmentation_scores(confusion)
    print(metrics.format_scores(scores, names))
    print("mIoU %.4f" % scores["miou"])
    return 0


if __name__ == "__main__":
    cli.run_main(main)
