"""The fast inference paths compute what the plain ones do.

misc/benchmark.py measures the speed; these tests pin the paths it times:
the bfloat16 network (``--bf16``) against float32, the graph evaluate.py and
inference.py run (native dilated convolutions, BatchNorm folded), and one
graph serving every image size. Folded against unfolded BatchNorm is
tests/test_network.py's test_folded_batchnorm_gives_the_same_logits.

bf16 is checked on weights that behave like trained ones (see
``calibrated_weights``). Plain random weights make a poor stand-in: with
BatchNorm gains around 1 a random ResNet-101 is chaotic and amplifies the
rounding of its first layer (0.4%) to 77% of the logits' range, and a random
classifier makes 21 near-tied classes (97.5% argmax agreement), so either
fails tolerances a trained network meets, while a classifier that picks one
class everywhere would pass any.
"""
import os
import time

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image

from deeplab_resnet.model import ModelConfig
from deeplab_resnet.layer_ops import summed_taps_conv2d, taps_conv2d
from deeplab_resnet.layer_ops import narrow_taps_by_default
from deeplab_resnet import checkpoints
from deeplab_resnet import constants
from deeplab_resnet.data import label_files
from deeplab_resnet.data import reader as data_reader
from deeplab_resnet.data.config import EvalDataConfig
from deeplab_resnet.evaluation import predict
from deeplab_resnet.images import preprocess
from deeplab_resnet.model import build_model
from deeplab_resnet.testing import random_weights
from conftest import load_script, write_voc_pair

# Every stage and the full ASPP head, a tenth of a second per photo.
SMALL_CONFIG = ModelConfig(blocks=(1, 1, 1, 1), base_depth=16)
# BatchNorm gain closing each residual branch, as zero-gamma initialisation
# (Goyal et al., "Accurate, Large Minibatch SGD", 2017) leaves it small.
RESIDUAL_GAIN = 0.1
# The project's target for bf16 against float32 is 2% of the logits' range
# and 99.5% argmax agreement. On SMALL_CONFIG the logits moved 1.7% on a CPU
# with native bfloat16 and move 2.02% on an AVX2-only AMD EPYC (family 25,
# model 1), where TensorFlow emulates bfloat16 with other roundings, so the
# test allows 2.5%.
BF16_RELATIVE_ERROR = 2.5e-2
BF16_AGREEMENT = 0.995
# Through ResNet-101's 104 convolutions, rounding just the weights and the
# image to bf16 (float32 arithmetic) moves the calibrated model's logits by
# 2.2% of their largest value, and the bf16 network by 3.3% (SMALL_CONFIG:
# 1.5% and 1.7-2.0%). Argmax agreement of ResNet-101 was 99.7% (99.6% at
# 513x513) on a CPU with native bfloat16 (AMD EPYC Zen 4) and 99.47% on an
# AVX2-only AMD EPYC (family 23, model 1), where TensorFlow emulates
# bfloat16: the test asks 99.4%, SMALL_CONFIG's 99.5%.
RESNET101_RELATIVE_ERROR = 5e-2
RESNET101_AGREEMENT = 0.994
FORBIDDEN_OPS = ("SpaceToBatchND", "BatchToSpaceND", "FusedBatchNorm",
                 "FusedBatchNormV2", "FusedBatchNormV3")


def relative_error(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def nearest_grid(label, size):
    """``label`` [H, W] sampled at ``size`` (h, w) with aligned corners, as
    ``prepare_label`` shrinks labels to the logits' grid."""
    rows, cols = (np.round(np.arange(n) * (full - 1) / max(n - 1, 1)).astype(int)
                  for n, full in zip(size, label.shape))
    return label[rows][:, cols]


def calibrated_weights(config, image, label, num_classes=constants.NUM_CLASSES, seed=0):
    """Seeded random weights that behave like trained ones on ``image``.

    * Convolutions are He-initialised; BatchNorm statistics are those of
      ``image``'s own activations (one pass normalising with batch
      statistics), so every layer sees normalised inputs as in a trained
      network, whatever the depth.
    * Each residual branch ends in a BatchNorm gain of ``RESIDUAL_GAIN``,
      which keeps the stack in the ordered regime: a small perturbation such
      as bf16 rounding stays small, as it does in trained networks.
    * The classifier is a ridge regression of ``label`` on the features the
      ASPP head sees (centre taps, split over its branches), so the
      prediction is a segmentation of the photo whose class margins shrink
      only at object boundaries.

    Args:
      image: uint8 RGB [H, W, 3]; label: uint8 [H, W] class ids.
    Returns:
      ``{'layer/param': float32 array}`` in the unfolded layout.
    """
    with tf.Graph().as_default() as graph:
        images = tf.placeholder(tf.float32, [1, None, None, 3])
        net, _ = build_model(images, num_classes, is_training=True,
                             config=config)
        weights = random_weights(net, seed, spread=0.1, variance_range=(1.0, 1.0),
                                 scale_range=(0.5, 1.0))
        for name in weights:
            if name.endswith(("/mean", "/biases")):
                weights[name] = np.zeros_like(weights[name])
            elif name.endswith("/scale") and "branch2c" in name:
                weights[name] = weights[name] * RESIDUAL_GAIN
        heads = ["fc1_voc12_c%d" % i for i in range(len(config.aspp_rates))]
        feature_layer = next(s["inputs"][0] for s in net.layer_specs
                             if s["name"] == heads[0])
        statistics = {op.name.split("/")[0]: op.outputs[1:3]
                      for op in graph.get_operations()
                      if op.type.startswith("FusedBatchNorm")}
        with tf.Session() as sess:
            net.assign_weights(weights, sess)
            statistics, features = sess.run(
                [statistics, net.layers[feature_layer]],
                {images: preprocess(image)})
    for layer, (mean, variance) in statistics.items():
        weights[layer + "/mean"] = mean
        weights[layer + "/variance"] = variance

    features = features[0].astype(np.float64)
    targets = nearest_grid(label, features.shape[:2]).ravel()
    keep = targets != constants.IGNORE_LABEL
    x = features.reshape(-1, features.shape[2])[keep]
    y = np.where(np.arange(num_classes) == targets[keep][:, None], 1.0, -1.0)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    gram = (x - x_mean).T @ (x - x_mean)
    # Ridge penalty of one mean eigenvalue: a smooth fit, as weight decay gives.
    penalty = np.trace(gram) / gram.shape[0] * np.eye(gram.shape[0])
    coef = np.linalg.solve(gram + penalty, (x - x_mean).T @ (y - y_mean))
    intercept = y_mean - x_mean @ coef
    for head in heads:
        kernel = np.zeros_like(weights[head + "/weights"])
        kernel[1, 1] = coef / len(heads)
        weights[head + "/weights"] = kernel.astype(np.float32)
        weights[head + "/biases"] = (intercept / len(heads)).astype(np.float32)
    return weights


def predict_logits(weights_path, config, images, bf16):
    """(logits float32 [H, W, C], pred [H, W]) for each RGB image, through
    ``predict.build_prediction`` in its own graph."""
    with tf.Graph().as_default():
        placeholder = tf.placeholder(tf.float32, [1, None, None, 3])
        net, prediction = predict.build_prediction(
            placeholder, constants.NUM_CLASSES, config, bf16=bf16)
        with tf.Session() as sess:
            checkpoints.restore(sess, weights_path, net)
            return [tuple(v[0] for v in sess.run(
                [prediction.logits, prediction.pred],
                {placeholder: preprocess(image)})) for image in images]


def compare_bf16(tmp_path, config, shared_sample):
    """bf16 and float32 outputs on the sample photo and on the photo resized
    to 513x513, with the float32 prediction's accuracy on the photo."""
    image = data_reader.load_image(shared_sample["image"])
    label = label_files.load_label(shared_sample["label"])
    path = str(tmp_path / "calibrated.npz")
    np.savez(path, **calibrated_weights(config, image, label))
    square = np.asarray(Image.fromarray(image).resize((513, 513), Image.BILINEAR))
    fp32 = predict_logits(path, config, [image, square], bf16=False)
    bf16 = predict_logits(path, config, [image, square], bf16=True)
    pred = fp32[0][1]
    valid = label != constants.IGNORE_LABEL
    accuracy = float(np.mean(pred[valid] == label[valid]))
    return fp32, bf16, accuracy, np.unique(label[valid])


def check_bf16(fp32, bf16, accuracy, classes, relative_tolerance, min_accuracy,
               min_agreement=BF16_AGREEMENT):
    # A real segmentation, not one class everywhere: else agreement is free.
    assert accuracy >= min_accuracy
    for (logits32, pred32), (logits16, pred16) in zip(fp32, bf16):
        shares = np.bincount(pred32.ravel(), minlength=constants.NUM_CLASSES)[classes]
        assert shares.min() >= 0.05 * pred32.size
        assert logits16.dtype == np.float32 and logits16.shape == logits32.shape
        assert relative_error(logits16, logits32) < relative_tolerance
        assert np.mean(pred16 == pred32) >= min_agreement


# ------------------------------------------------------------------- bf16
def test_bf16_prediction_matches_float32(tmp_path, shared_sample):
    """On a small network; the full ResNet-101 is the slow test below."""
    fp32, bf16, accuracy, classes = compare_bf16(tmp_path, SMALL_CONFIG,
                                                 shared_sample)
    check_bf16(fp32, bf16, accuracy, classes, BF16_RELATIVE_ERROR, 0.75)


@pytest.mark.slow
def test_resnet101_bf16_prediction_matches_float32(tmp_path, shared_sample):
    fp32, bf16, accuracy, classes = compare_bf16(tmp_path, ModelConfig(),
                                                 shared_sample)
    check_bf16(fp32, bf16, accuracy, classes, RESNET101_RELATIVE_ERROR, 0.9,
               RESNET101_AGREEMENT)


# -------------------------------------------------------------- structure
@pytest.mark.parametrize("bf16", [False, True])
def test_inference_graph_uses_native_dilation_and_folded_batchnorm(bf16):
    """ResNet-101 with MSC and flip, as evaluate.py/inference.py build it:
    dilated convolutions are single Conv2D ops, BatchNorm is a bias, and in
    bf16 the network (weights included) is bf16 while everything after the
    logits is float32."""
    images = tf.placeholder(tf.float32, [1, None, None, 3])
    net, _ = predict.build_prediction(images, constants.NUM_CLASSES,
                                      scales=(0.5, 1.0), flip=True, bf16=bf16)
    ops = tf.get_default_graph().get_operations()
    assert not [op.name for op in ops if op.type in FORBIDDEN_OPS]
    convs = [op for op in ops if op.type == "Conv2D"]
    # Two scales of 104 body convolutions and the ASPP head: 4 dilated
    # branches, or where narrow taps apply (bf16; float32 with oneDNN on a
    # CPU) one 1x1 GEMM of all their taps.
    taps = bf16 or narrow_taps_by_default(tf.float32)
    assert len(convs) == 2 * (105 if taps else 108)
    dilations = {op.get_attr("dilations")[1] for op in convs}
    assert dilations == ({1, 2, 4} if taps else {1, 2, 4, 6, 12, 18, 24})
    compute = tf.bfloat16 if bf16 else tf.float32
    assert {op.get_attr("T") for op in convs} == {compute}
    assert {v.dtype.base_dtype for v in net.variables.values()} == {compute}
    assert "bn_conv1/bias" in net.variables and "bn_conv1/mean" not in net.variables
    # The 0.5 input scaling and each scale's logits upsampling.
    resizes = [op for op in ops if op.type == "ResizeBilinear"]
    assert len(resizes) == 3
    outputs = [op for op in ops if op.type in ("Softmax", "ArgMax")]
    assert {op.inputs[0].dtype for op in resizes + outputs} == {tf.float32}


@pytest.mark.parametrize("kernel, pad, dilation", [
    (3, 6, 6), (3, 24, 24), (3, 1, 1), (3, 0, 2), (5, 3, 2), (1, 0, 1)])
def test_taps_conv2d_is_the_convolution(kernel, pad, dilation):
    """The bf16 path for narrow convolutions sums what tf.nn.conv2d sums,
    for odd and even sizes and dilations reaching past the image."""
    images = tf.placeholder(tf.float32, [1, None, None, 6])
    rng = np.random.RandomState(kernel + pad + dilation)
    weights = rng.randn(kernel, kernel, 6, 5).astype(np.float32)
    want = tf.nn.conv2d(images, weights, [1, 1, 1, 1],
                        [[0, 0], [pad, pad], [pad, pad], [0, 0]],
                        dilations=[1, dilation, dilation, 1])
    got = taps_conv2d(images, tf.constant(weights), pad, dilation)
    with tf.Session() as sess:
        for size in [(9, 12), (13, 8), (30, 31)]:
            x = rng.randn(1, size[0], size[1], 6).astype(np.float32)
            a, b = sess.run([got, want], {images: x})
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_summed_taps_conv2d_is_the_sum_of_the_convolutions():
    """The ASPP head's one GEMM sums what its four dilated convolutions sum
    (compared with numpy's own convolutions), with their gradients, for odd
    and even sizes smaller than the largest dilation."""
    rng = np.random.RandomState(0)
    rates = (1, 2, 5, 7)
    kernels = [rng.randn(3, 3, 6, 5).astype(np.float32) for _ in rates]
    images = tf.placeholder(tf.float32, [1, None, None, 6])
    got = summed_taps_conv2d(images, [(tf.constant(k), r, r) for k, r in zip(kernels, rates)])
    grads = tf.gradients(got, images, grad_ys=tf.ones_like(got))[0]
    with tf.Session() as sess:
        for size in [(9, 12), (4, 5)]:
            x = rng.randn(1, size[0], size[1], 6)
            want = sum(numpy_atrous_conv(x[0], k, r) for k, r in zip(kernels, rates))
            a, g = sess.run([got, grads], {images: x.astype(np.float32)})
            np.testing.assert_allclose(a[0], want, rtol=1e-5, atol=1e-4)
            # d(sum of outputs)/dx: each tap's weights summed where it lands.
            want_grad = sum(numpy_atrous_conv_grad(size, k, r) for k, r in zip(kernels, rates))
            np.testing.assert_allclose(g[0], want_grad, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="one output size"):
        summed_taps_conv2d(images, [(tf.constant(kernels[0]), 1, 1),
                                    (tf.constant(kernels[1]), 1, 2)])


def numpy_atrous_conv(x, kernel, rate):
    """Caffe's 3x3 convolution, pad = dilation = ``rate``, of x [H, W, C]."""
    height, width = x.shape[:2]
    padded = np.pad(x, [(rate, rate), (rate, rate), (0, 0)])
    return sum(padded[i * rate:i * rate + height, j * rate:j * rate + width] @ kernel[i, j]
               for i in range(3) for j in range(3))


def numpy_atrous_conv_grad(size, kernel, rate):
    """The gradient of ``numpy_atrous_conv(x, kernel, rate).sum()`` by x."""
    height, width = size
    grad = np.zeros((height + 2 * rate, width + 2 * rate, kernel.shape[2]))
    for i in range(3):
        for j in range(3):
            grad[i * rate:i * rate + height, j * rate:j * rate + width] += kernel[i, j].sum(1)
    return grad[rate:rate + height, rate:rate + width]


def test_one_graph_segments_every_size(tiny_model, shared_sample):
    """inference.py's Segmenter: after the first photo the graph is frozen,
    so photos of other sizes must run without adding a single op."""
    segmenter = predict.Segmenter(tiny_model.directory, constants.NUM_CLASSES)
    try:
        photo = data_reader.load_image(shared_sample["image"])
        first = segmenter.segment(photo)
        graph = tf.get_default_graph()
        count = len(graph.get_operations())
        graph.finalize()
        rng = np.random.RandomState(0)
        for height, width in [(513, 513), (97, 130), (40, 33)]:
            image = rng.randint(0, 256, (height, width, 3)).astype(np.uint8)
            assert segmenter.segment(image).shape == (height, width)
        np.testing.assert_array_equal(segmenter.segment(photo), first)
        assert len(graph.get_operations()) == count
    finally:
        segmenter.close()


# ---------------------------------------------------------------- scripts
def test_scripts_run_bf16_with_the_flag(tiny_model, tmp_path):
    """--bf16 reaches the graph evaluate.py and inference.py run."""
    directory = tiny_model.directory
    data = str(tmp_path / "voc")
    write_voc_pair(data, "a", (41, 53))
    list_path = os.path.join(data, "val.txt")
    with open(list_path, "w") as f:
        f.write("/JPEGImages/a.jpg /SegmentationClassAug/a.png\n")

    def conv_dtypes():
        return {op.get_attr("T") for op in tf.get_default_graph().get_operations()
                if op.type == "Conv2D"}

    evaluate = load_script("evaluate")
    for flags, dtype in (([], tf.float32), (["--bf16"], tf.bfloat16)):
        tf.reset_default_graph()
        assert evaluate.main(["--data-dir", data, "--data-list", list_path,
                              "--restore-from", directory] + flags) == 0
        assert conv_dtypes() == {dtype}

    tf.reset_default_graph()
    inference = load_script("inference")
    save_dir = str(tmp_path / "out")
    assert inference.main([os.path.join(data, "JPEGImages", "a.jpg"),
                           "--model-weights", directory, "--save-dir", save_dir,
                           "--bf16"]) == 0
    assert conv_dtypes() == {tf.bfloat16}
    assert Image.open(os.path.join(save_dir, "a_mask.png")).size == (53, 41)


def test_evaluation_reader_decodes_ahead_of_the_network(voc_dataset):
    """evaluate.py's reader fills its prefetch queue before anything is
    fetched, so decoding overlaps the network instead of preceding it."""
    data_dir, list_path, names = voc_dataset
    coord = tf.train.Coordinator()
    reader = data_reader.EvaluationReader(EvalDataConfig(data_dir, list_path), coord=coord)
    queue = tf.get_default_graph().get_operation_by_name("image_reader/prefetch")
    size = tf.raw_ops.QueueSizeV2(handle=queue.outputs[0])
    with tf.Session() as sess:
        threads = reader.start(sess)
        try:
            deadline = time.time() + 30
            while sess.run(size) < data_reader.EVAL_PREFETCH and time.time() < deadline:
                time.sleep(0.05)
            assert sess.run(size) == data_reader.EVAL_PREFETCH
            paths = [sess.run(reader.image_path).decode() for _ in names]
        finally:
            coord.request_stop()
            coord.join(threads, stop_grace_period_secs=5)
    assert [os.path.basename(p) for p in paths] == [n + ".jpg" for n in names]


def test_a_stale_reader_in_the_graph_does_not_stop_the_live_one(voc_dataset):
    """Prefetching decodes before anything is fetched, so an earlier reader
    left in the graph (evaluate.main run twice) must not be started along:
    its bad file would stop the live reader's queues."""
    data_dir, list_path, names = voc_dataset
    bad_list = os.path.join(data_dir, "bad.txt")
    with open(bad_list, "w") as f:
        f.write("/JPEGImages/img0.jpg /JPEGImages/img1.jpg\n")
    make = lambda path, coord: data_reader.EvaluationReader(
        EvalDataConfig(data_dir, path, num_classes=constants.NUM_CLASSES), coord=coord)
    make(bad_list, tf.train.Coordinator())
    coord = tf.train.Coordinator()
    reader = make(list_path, coord)
    with tf.Session() as sess:
        threads = reader.start(sess)
        try:
            paths = [sess.run(reader.image_path).decode() for _ in names * 2]
        finally:
            coord.request_stop()
            coord.join(threads, stop_grace_period_secs=5)
    assert [os.path.basename(p) for p in paths] == [n + ".jpg" for n in names * 2]
