"""Segment photos with a trained DeepLab model.

Inputs are image files, directories (the images directly inside) or glob
patterns, of any size, JPEG or PNG; grayscale and RGBA photos are converted
to RGB. For each photo <name>.<ext> it writes into --save-dir:

  <name>_mask.png      the prediction in VOC colours
  <name>_label.png     with --save-raw: palette PNG whose pixel values are class ids
  <name>_overlay.png   with --overlay [png|jpg]: the photo blended with the mask

Inputs are never overwritten. A missing or unreadable input is reported by
name and the others are still processed; the exit status is then 1 (2 for
errors that stop everything, such as missing weights).

Example:
  python inference.py photos/ street.jpg --model-weights snapshots/ --overlay
"""
import argparse
import logging
import os
import time

from deeplab_resnet import crf, image_reader, predict, utils

log = logging.getLogger(__name__)


def get_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+",
                        help="Image files, directories of images, or glob "
                             "patterns (quote them), e.g. 'photos/*.jpg'.")
    utils.add_model_flags(parser, weights_flags=("--model-weights", "--restore-from"))
    parser.add_argument("--save-dir", default="./output",
                        help="Where the outputs go; created if missing "
                             "(default: %(default)s).")
    parser.add_argument("--save-raw", action="store_true",
                        help="Also write <name>_label.png, a palette PNG whose "
                             "pixel values are class ids (default: off).")
    parser.add_argument("--overlay", nargs="?", const="png", choices=("png", "jpg"),
                        default=None,
                        help="Also write <name>_overlay.png (or .jpg with "
                             "'--overlay jpg'): the photo blended with the mask "
                             "(default: off).")
    parser.add_argument("--overlay-alpha", type=float, default=0.5,
                        help="Weight of the mask in the overlay, 0..1 "
                             "(default: %(default)s).")
    predict.add_prediction_flags(parser)
    crf.add_crf_flags(parser)
    utils.add_runtime_flags(parser)
    return parser.parse_args(argv)


def planned_outputs(args, path):
    """{kind: output path} for one input."""
    outputs = {"mask": predict.output_path(args.save_dir, path, "_mask.png")}
    if args.save_raw:
        outputs["label"] = predict.output_path(args.save_dir, path, "_label.png")
    if args.overlay:
        outputs["overlay"] = predict.output_path(args.save_dir, path,
                                                 "_overlay." + args.overlay)
    return outputs


def check_outputs(outputs, path, inputs, written):
    """Refuse to overwrite an input, or another input's output of this run."""
    for target in outputs.values():
        key = os.path.realpath(target)
        if key in inputs:
            raise IOError("Not segmenting %s: its output %s would overwrite an "
                          "input image. Choose another --save-dir." % (path, target))
        if key in written:
            raise IOError("Not segmenting %s: its output %s was already written "
                          "for %s (same name). Rename one of them or segment "
                          "them separately." % (path, target, written[key]))


def write_outputs(args, image, label, outputs):
    """Write one photo's mask (and raw label, overlay)."""
    predict.save_rgb(predict.colour_mask(label), outputs["mask"])
    if "label" in outputs:
        predict.save_label_png(label, outputs["label"])
    if "overlay" in outputs:
        predict.save_rgb(predict.overlay(image, label, args.overlay_alpha),
                         outputs["overlay"], quality=95)


def main(argv=None):
    args = get_arguments(argv)
    utils.setup_logging()
    scales = predict.parse_scales(args.scales)
    crf_params = crf.params_from_flags(args)
    if not 0.0 <= args.overlay_alpha <= 1.0:
        raise ValueError("--overlay-alpha must be in 0..1, got %r."
                         % args.overlay_alpha)
    paths, failures = predict.expand_inputs(args.inputs)
    for problem in failures:
        log.error("error: %s", problem)
    if not paths:
        raise IOError("No images to segment in %s." % ", ".join(args.inputs))

    inputs = {os.path.realpath(p) for p in paths}
    # Output path -> input, claimed before segmenting so that a later input
    # of the same name is refused even while the CRF of this one is queued.
    written = {}
    progress = utils.Progress(len(paths), unit="image")

    def fail(err, outputs=()):
        failures.append(str(err))
        log.error("error: %s", err)
        for target in outputs:
            del written[os.path.realpath(target)]

    def finish(job, label):
        i, path, image, outputs, start = job
        try:
            write_outputs(args, image, predict.labels_from(None, pred=label),
                          outputs)
        except (IOError, OSError, ValueError) as err:
            fail(err, outputs.values())
            return
        log.info("image %d/%d %s %dx%d %.2f s %s", i, len(paths), path,
                 image.shape[1], image.shape[0], time.time() - start,
                 progress.line(i))

    # Before the graph: CRF workers start while it is built.
    crf_pool = crf.pool_from_flags(args, crf_params)
    segmenter = None
    try:
        segmenter = predict.Segmenter(args.restore_from, args.num_classes, scales,
                                      args.flip, None, args.intra_op_threads,
                                      args.inter_op_threads, bf16=args.bf16)
        os.makedirs(args.save_dir, exist_ok=True)
        progress.update(0)
        for i, path in enumerate(paths, 1):
            start = time.time()
            outputs = planned_outputs(args, path)
            try:
                check_outputs(outputs, path, inputs, written)
            except IOError as err:
                fail(err)
                continue
            written.update((os.path.realpath(t), path) for t in outputs.values())
            try:
                image = image_reader.load_image(path)
                job = (i, path, image, outputs, start)
                if crf_pool is None:
                    finished = [(job, segmenter.segment(image))]
                else:
                    finished = crf_pool.submit(
                        image, segmenter.probabilities(image), path, tag=job)
            except (IOError, OSError, ValueError) as err:
                fail(err, outputs.values())
                continue
            for finished_job, label in finished:
                finish(finished_job, label)
        for finished_job, label in crf_pool.drain() if crf_pool is not None else ():
            finish(finished_job, label)
    finally:
        if crf_pool is not None:
            crf_pool.close()
        if segmenter is not None:
            segmenter.close()
    done = len(set(written.values()))
    log.info("segmented %d of %d images into %s", done, len(paths), args.save_dir)
    if failures:
        log.error("%d input(s) failed; see the errors above.", len(failures))
        return 1
    return 0


if __name__ == "__main__":
    utils.run_main(main)
