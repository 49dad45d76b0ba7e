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
"""
import argparse
import logging
import os

import numpy as np
import tensorflow.compat.v1 as tf

from deeplab_resnet import crf, labels, predict, utils
from deeplab_resnet.image_reader import ImageReader

log = logging.getLogger(__name__)

# Progress is logged every this many images, and after the last.
LOG_EVERY = 100


def get_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    utils.add_data_flags(parser)
    utils.add_model_flags(parser)
    parser.add_argument("--num-steps", type=int, default=None,
                        help="Images to evaluate, from the top of the list "
                             "(default: the whole list).")
    parser.add_argument("--save-dir", default=None,
                        help="Write each prediction to <save-dir>/<image name>.png "
                             "as a palette PNG with the VOC colours (pixel value = "
                             "class id) (default: not written).")
    parser.add_argument("--save-confusion", default=None,
                        help="Write the confusion matrix (rows: ground truth, "
                             "columns: prediction) to this .csv or .npy file "
                             "(default: not written).")
    labels.add_class_names_flag(parser)
    predict.add_prediction_flags(parser)
    crf.add_crf_flags(parser)
    utils.add_runtime_flags(parser)
    return parser.parse_args(argv)


def check_save_dir(reader, save_dir):
    """Refuse predictions that would overwrite a listed file or each other."""
    listed = {os.path.realpath(p) for p in reader.image_list + reader.label_list}
    targets = {}
    for image_path in reader.image_list:
        target = predict.output_path(save_dir, image_path, ".png")
        if os.path.realpath(target) in listed:
            raise IOError("--save-dir %s would overwrite the dataset file %s. "
                          "Choose another --save-dir." % (save_dir, target))
        if target in targets:
            raise ValueError("%s and %s would both be saved as %s. Evaluate them "
                             "without --save-dir, or rename one."
                             % (targets[target], image_path, target))
        targets[target] = image_path


def predictions(sess, fetches, num_steps, reader, crf_pool=None):
    """Yield (image path, label, pred) for the next ``num_steps`` images.

    Results come in list order. With a pool the network goes on with the
    next images while earlier ones are in the CRF.
    """
    for _ in range(num_steps):
        try:
            values = sess.run(fetches)
        except tf.errors.OpError:
            reader.raise_if_failed()
            raise
        path, label = values["path"].decode(), values["label"][0, ..., 0]
        if crf_pool is None:
            yield path, label, values["pred"][0]
            continue
        image = utils.inv_preprocess(values["image"])[0]
        for tag, pred in crf_pool.submit(image, values["probs"][0], path,
                                         tag=(path, label)):
            yield tag + (pred,)
    for tag, pred in crf_pool.drain() if crf_pool is not None else ():
        yield tag + (pred,)


def main(argv=None):
    args = get_arguments(argv)
    utils.setup_logging()
    scales = predict.parse_scales(args.scales)
    crf_params = crf.params_from_flags(args)
    names = labels.class_names(args.num_classes, args.class_names)
    predict.check_confusion_path(args.save_confusion)
    if args.num_steps is not None and args.num_steps < 1:
        raise ValueError("--num-steps must be at least 1, got %d." % args.num_steps)
    weights, config = predict.resolve_model(args.restore_from, args.num_classes)

    coord = tf.train.Coordinator()
    reader = ImageReader(args.data_dir, args.data_list, None, False, False,
                         args.ignore_label, utils.IMG_MEAN, coord, shuffle=False,
                         num_classes=args.num_classes, label_map=args.label_map)
    num_steps = reader.num_images
    if args.num_steps is not None:
        if args.num_steps > reader.num_images:
            log.warning("--num-steps %d is more than the %d listed images; "
                        "evaluating each once.", args.num_steps, reader.num_images)
        num_steps = min(args.num_steps, reader.num_images)
    if args.save_dir:
        check_save_dir(reader, args.save_dir)
        os.makedirs(args.save_dir, exist_ok=True)

    # Before the graph: CRF workers start while it is built.
    crf_pool = crf.pool_from_flags(args, crf_params)
    net, prediction = predict.build_prediction(
        reader.image, args.num_classes, config, scales, args.flip, bf16=args.bf16)
    fetches = {"label": reader.label, "path": reader.image_path}
    if crf_params is None:
        fetches["pred"] = prediction.pred
    else:
        fetches["probs"] = prediction.probs
        fetches["image"] = reader.image
    sess = predict.open_session(net, weights, args.intra_op_threads,
                                args.inter_op_threads)
    log.info("Evaluating %s on %d images of %s (scales %s%s%s%s)", weights, num_steps,
             args.data_list, ",".join("%g" % s for s in scales),
             ", flip" if args.flip else "", ", CRF" if crf_params else "",
             ", bf16" if args.bf16 else "")

    confusion = np.zeros((args.num_classes, args.num_classes), np.int64)
    progress = utils.Progress(num_steps, unit="image")
    progress.update(0)
    threads = reader.start(sess)
    try:
        results = predictions(sess, fetches, num_steps, reader, crf_pool)
        for step, (path, label, pred) in enumerate(results, 1):
            pred = predict.labels_from(None, pred=pred)
            confusion += utils.confusion_matrix(label, pred, args.num_classes,
                                                args.ignore_label)
            if args.save_dir:
                predict.save_label_png(pred, predict.output_path(args.save_dir, path,
                                                                 ".png"))
            if step % LOG_EVERY == 0 or step == num_steps:
                log.info("step %d/%d mIoU=%.4f %s", step, num_steps,
                         utils.segmentation_scores(confusion)["miou"],
                         progress.line(step))
    finally:
        if crf_pool is not None:
            crf_pool.close()
        coord.request_stop()
        try:
            coord.join(threads, stop_grace_period_secs=5)
        except Exception as err:
            # A reader thread's error: the loop has raised it already, or it
            # came from prefetching past the last evaluated image.
            log.debug("reader stopped with %s", err)
        sess.close()

    if args.save_confusion:
        predict.save_confusion(confusion, args.save_confusion)
    scores = utils.segmentation_scores(confusion)
    print(predict.format_scores(scores, names))
    print("mIoU %.4f" % scores["miou"])
    return 0


if __name__ == "__main__":
    utils.run_main(main)
