"""Export a trained DeepLab model for serving: frozen GraphDef and SavedModel.

Writes into --output-dir (which appears only once complete):

  frozen_graph.pb    GraphDef with the weights as constants
  saved_model/       SavedModel, tag 'serve', signature 'serving_default'
  export_info.json   tensor names, dtypes, classes, scales, flip, source
  model.onnx         with --onnx: the same model for onnxruntime (needs
                     requirements-onnx.txt; not with --bf16 or --crf)

Both take one RGB photo of any size and return its labels and probabilities
at that size; preprocessing (RGB->BGR, mean subtraction) and BatchNorm
folding are inside the graph:

  input   image          uint8   [1, H, W, 3]  RGB
  output  label          uint8   [1, H, W]     class ids (int32 if > 256 classes)
  output  probabilities  float32 [1, H, W, C]  softmax

--scales, --flip and --bf16 are baked into the graph. --crf adds the dense
CRF (TensorFlow ops, the --crf-* parameters baked in) after the network:
label and probabilities are then the CRF's, as inference.py --crf
--crf-backend tensorflow gives them. The architecture is
read from model_config.json beside the checkpoint, as for evaluate.py.

Example:
  python export.py --restore-from snapshots/ --output-dir exported/
"""
import argparse
import logging

from deeplab_resnet import cli, serving

log = logging.getLogger("export")


def get_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_flags(parser)
    parser.add_argument("--output-dir", type=cli.output_directory, default="exported_model",
                        help="Directory to write; must not exist or be empty "
                             "unless --overwrite (default: %(default)s).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an earlier export in --output-dir once the "
                             "new one is complete; a directory holding anything "
                             "else is refused (default: refuse).")
    cli.add_prediction_flags(parser)
    cli.add_crf_flags(parser, runtime=False)
    parser.add_argument("--onnx", action="store_true",
                        help="Also write model.onnx for onnxruntime (pip install "
                             "-r requirements-onnx.txt; not with --bf16 or --crf).")
    return parser.parse_args(argv)


def main(argv=None):
    args = get_arguments(argv)
    cli.setup_logging()
    predict = cli.predict_config(args)
    crf = cli.crf_config(args)
    info = serving.export(args.restore_from, args.output_dir, args.num_classes,
                          predict=predict, crf=crf, overwrite=args.overwrite,
                          onnx=args.onnx)
    log.info("input %s uint8 [1, H, W, 3] RGB; outputs %s %s [1, H, W], %s "
             "float32 [1, H, W, %d]; scales %s%s%s%s", serving.INPUT_NAME,
             serving.LABEL_NAME, info["outputs"][serving.LABEL_NAME]["dtype"],
             serving.PROBS_NAME, args.num_classes,
             ",".join("%g" % s for s in predict.scales), ", flip" if args.flip else "",
             ", bfloat16 network" if args.bf16 else "",
             ", dense CRF (%d iterations)" % crf.iterations if crf else "")
    print("exported %s" % args.output_dir)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
