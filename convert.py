"""Convert DeepLab-v2's released Caffe weights (.caffemodel) for this project.

    python convert.py train_iter_20000.caffemodel --output deeplab_resnet.npz
    python convert.py init.caffemodel --output init.npz   # body only

Reads the model without Caffe (both the 'layer' and the legacy V1 'layers'
format), maps its layers to our variables by name and checks that every
variable of DeepLab-v2 ResNet-101 is covered before writing anything. Layers
of the training net that are not part of the network (multi-scale copies such
as *_res075, data, loss) are ignored. An ImageNet/COCO init model without
the fc1_voc12 classifier gives the body only: train from it with
--not-restore-last.

    python convert.py --write-prototxt misc/deploy.prototxt

writes the Caffe deploy prototxt of the network as this project builds it.
"""
import argparse
import logging
import os

from deeplab_resnet import checkpoints, cli
from deeplab_resnet.caffe import convert
from deeplab_resnet.constants import NUM_CLASSES

log = logging.getLogger("convert")


def default_output(caffemodel):
    """The .npz beside the model, named after its own file.

    Only the file name's extension is replaced: a model without one
    (``v1.2/deeplab``) becomes ``v1.2/deeplab.npz``, not ``v1.npz`` or a
    hidden ``.npz`` in the parent directory.
    """
    return os.path.splitext(caffemodel)[0] + ".npz"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caffemodel", nargs="?",
                        help="The .caffemodel to convert (required unless "
                             "--write-prototxt is given).")
    parser.add_argument("--output", default=None,
                        help="The .npz to write, keys like 'res2a_branch1/weights' "
                             "(default: beside the caffemodel, its file name with "
                             "the extension replaced by .npz: x.caffemodel -> "
                             "x.npz).")
    parser.add_argument("--prototxt", default=None,
                        help="Check the model against this prototxt (layer names, "
                             "types and num_output) before converting "
                             "(default: no check).")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="Classes the model must have; a different classifier "
                             "is an error (default: taken from the model's "
                             "fc1_voc12_c0, %d without classifier)." % NUM_CLASSES)
    parser.add_argument("--drop-classifier", action="store_true",
                        help="Convert the body only, leaving out fc1_voc12_* (e.g. "
                             "to fine-tune for other classes; default: off).")
    parser.add_argument("--checkpoint", default=None, metavar="PREFIX",
                        help="Also write a TensorFlow checkpoint with this prefix, "
                             "and model_config.json beside it (default: none).")
    parser.add_argument("--model-config", default=None,
                        help="model_config.json (or its directory) describing a "
                             "non-standard architecture (default: DeepLab-v2 "
                             "ResNet-101).")
    parser.add_argument("--write-prototxt", default=None, metavar="PATH",
                        help="Write the network's Caffe deploy prototxt to PATH "
                             "(for --num-classes, default %d) instead of "
                             "converting." % NUM_CLASSES)
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace existing output files (default: refuse).")
    args = parser.parse_args(argv)
    if args.caffemodel is None and args.write_prototxt is None:
        parser.error("give a .caffemodel to convert, or --write-prototxt PATH")
    return args


def main(argv=None):
    args = parse_args(argv)
    cli.setup_logging()
    config = None
    if args.model_config:
        _, config = checkpoints.read_model_config(args.model_config)
    if args.write_prototxt:
        convert.write_model_prototxt(args.write_prototxt, args.num_classes, config,
                                     overwrite=args.overwrite)
        if args.caffemodel is None:
            return 0
    output = args.output if args.output is not None else default_output(args.caffemodel)
    if os.path.realpath(output) == os.path.realpath(args.caffemodel):
        raise ValueError("The output %s would replace the model being converted. "
                         "Give another --output." % output)
    result = convert.convert_caffemodel(
        args.caffemodel, output, prototxt=args.prototxt, num_classes=args.num_classes,
        config=config, checkpoint=args.checkpoint,
        drop_classifier=args.drop_classifier, overwrite=args.overwrite)
    log.info("converted %d variables (%s) -> %s", len(result.weights),
             "%d classes" % result.num_classes if result.has_classifier
             else "body only, no classifier", output)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
