"""TensorFlow dense CRF (crf.permutohedral, crf.backend_tf) against independent computations.

* the lattice filter against a brute-force dense Gaussian filter in numpy
  (the permutohedral lattice only approximates it; tolerances below);
* the symmetric-normalised kernels and the whole CRF against pydensecrf,
  the C++ code the module reimplements (agreement to float32 rounding);
* one graph serving images of different sizes, iterations=0, errors.
"""
import collections
import os

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image

from deeplab_resnet.crf import backend_tf, permutohedral
from deeplab_resnet.testing import network_like_probs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC_SAMPLE = os.path.join(REPO_ROOT, os.pardir, "shared", "data", "voc_sample")

# The attributes of the project's CrfConfig; a namedtuple of our own keeps
# this test independent of where CrfConfig lives.
# Pruning is off (threshold 0) here: these tests hold the unpruned CRF to
# pydensecrf; tests/test_crf_pruning.py tests pruning.
Params = collections.namedtuple(
    "Params", "iterations pos_w pos_xy_std bi_w bi_xy_std bi_rgb_std prune_threshold",
    defaults=(0.0,))
DEEPLAB = Params(10, 3.0, 3.0, 4.0, 67.0, 3.0)


def run(build, *args):
    """Build with ``build(*placeholders)`` in a fresh graph and evaluate it."""
    graph = tf.Graph()
    with graph.as_default():
        placeholders = [tf.placeholder(tf.as_dtype(a.dtype), a.shape) for a in args]
        out = build(*placeholders)
        with tf.Session(graph=graph, config=backend_tf.crf_session_config()) as session:
            return session.run(out, dict(zip(placeholders, args)))


def scene(seed=0, height=36, width=48, classes=4):
    """Flat colour regions with noise, and a noisy softmax that favours them."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:height, :width]
    label = (xx * 3 // width) % classes
    label[(yy - height // 2) ** 2 + (xx - width // 2) ** 2 < (height // 4) ** 2] = classes - 1
    colours = rng.randint(0, 256, (classes, 3))
    image = np.clip(colours[label] + rng.normal(0, 10, (height, width, 3)), 0, 255)
    logits = rng.normal(0, 1.0, (height, width, classes))
    logits[yy, xx, label] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return image.astype(np.uint8), label, probs.astype(np.float32)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------ lattice filter
@pytest.mark.parametrize("dim,extent", [(2, 6.0), (5, 3.0)])
def test_lattice_filter_approximates_a_dense_gaussian(dim, extent):
    """Normalised lattice filter vs sum_j exp(-|fi - fj|^2 / 2) v_j / sum_j exp(..).

    Adams et al.'s lattice is a coarse approximation (splat, a [1 2 1] blur
    per direction, slice); measured on these points: mean error ~0.012-0.015
    and max ~0.07-0.13 on values spanning 2, so 0.03 / 0.25 here; leaving the
    values unfiltered would be off by far more.
    """
    rng = np.random.RandomState(dim)
    n = 400
    features = (rng.rand(n, dim) * extent).astype(np.float32)
    values = np.stack([np.sin(features.sum(1)), 2 * rng.rand(n) - 1], 1).astype(np.float32)
    ones = np.ones((n, 1), np.float32)
    out = run(lambda f, v: permutohedral.lattice_filter(f, v), features,
              np.concatenate([values, ones], 1))
    kernel = np.exp(-0.5 * ((features[:, None] - features[None]) ** 2).sum(-1))
    brute = kernel @ values / kernel.sum(1, keepdims=True)
    approx = out[:, :2] / out[:, 2:]
    error = np.abs(approx - brute)
    assert error.mean() < 0.03 and error.max() < 0.25
    assert np.abs(values - brute).mean() > 10 * error.mean()
    # Unnormalised, it is the Gaussian sum up to one constant factor.
    ratio = out[:, 2] / kernel.sum(1)
    assert ratio.std() / ratio.mean() < 0.1


def test_lattice_of_a_single_point_and_its_neighbours():
    # One point: its simplex's d + 1 vertices, weights summing to 1, and no
    # vertex missing its own simplex neighbours.
    features = np.array([[0.3, 1.7, -0.4]], np.float32)

    def build(f):
        lat = permutohedral.PermutohedralLattice(f)
        return lat.num_points, lat.bary, lat.offsets, tf.stack(lat.n1)
    m, bary, offsets, n1 = run(build, features)
    assert m == 4
    assert sorted(offsets[:, 0]) == [0, 1, 2, 3]
    np.testing.assert_allclose(bary.sum(), 1.0, rtol=1e-6)
    assert (bary >= 0).all()
    # Consecutive vertices of a simplex are lattice neighbours: each of the
    # 4 points has exactly one n1 neighbour among the 4 (a cycle).
    assert ((n1 >= 0).sum(0) == 1).all()


def pydensecrf_message(image, q_unary, kernel, sxy, srgb=None):
    """pydensecrf's symmetric-normalised K(Q0) for one kernel with compat 1.

    pydensecrf does not expose the filter, so it is read off one mean-field
    step: with an extra class of unary 50 (Q0 ~ e^-50, message ~0),
    log Q1[c] - log Q1[extra] = -U[c] + K(Q0)[c] + 50.
    Returns (Q0, K(Q0)), both [N, C].
    """
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    height, width = image.shape[:2]
    n, c = q_unary.shape
    unary = np.concatenate([q_unary, np.full((n, 1), 50, np.float32)], 1)
    crf = dcrf.DenseCRF2D(width, height, c + 1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.T))
    if kernel == "gaussian":
        crf.addPairwiseGaussian(sxy=sxy, compat=1)
    else:
        crf.addPairwiseBilateral(sxy=sxy, srgb=srgb, rgbim=np.ascontiguousarray(image),
                                 compat=1)
    q, tmp1, tmp2 = crf.startInference()
    q0 = np.array(q).T[:, :c].copy()
    crf.stepInference(q, tmp1, tmp2)
    log_q1 = np.log(np.array(q).T.astype(np.float64))
    return q0, log_q1[:, :c] - log_q1[:, c:] + q_unary - 50


@pytest.mark.parametrize("kernel,sxy,srgb", [("gaussian", 3.0, None),
                                             ("bilateral", 10.0, 13.0),
                                             ("bilateral", 67.0, 3.0)])
def test_normalised_kernel_equals_pydensecrf(kernel, sxy, srgb):
    image, _, probs = scene(seed=1, height=40, width=60)
    unary = -np.log(probs.reshape(-1, probs.shape[2]))
    q0, expected = pydensecrf_message(image, unary, kernel, sxy, srgb)

    def build(img, q):
        h, w = tf.shape(img)[0], tf.shape(img)[1]
        features = (backend_tf.pixel_features(h, w, sxy) if kernel == "gaussian" else
                    backend_tf.pixel_features(h, w, sxy, img, srgb))
        operators = permutohedral.LatticeOperators(permutohedral.PermutohedralLattice(features))
        norm = permutohedral.symmetric_norm(operators)
        return operators.filter(norm, norm)(q)
    got = run(build, image, q0)
    # The read-off is good to ~1e-6 (float32 logs of values ~50).
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert np.abs(expected).max() > 0.1


# ---------------------------------------------------------------- the CRF
@pytest.fixture(scope="module")
def deeplab_crf():
    """One TensorFlowCrf (DeepLab parameters, 4 classes) for several tests:
    building a graph is the slow part of these tests."""
    crf = backend_tf.TensorFlowCrf(DEEPLAB, 4)
    yield crf
    crf.close()


def pydensecrf_marginals(image, probs, params):
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    height, width, classes = probs.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(
        -np.log(np.clip(probs, 1e-8, 1)).reshape(-1, classes).T))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
                             rgbim=np.ascontiguousarray(image), compat=params.bi_w)
    return np.array(crf.inference(params.iterations)).reshape(
        classes, height, width).transpose(1, 2, 0)


@pytest.mark.parametrize("params", [DEEPLAB, Params(5, 0.0, 3.0, 5.0, 30.0, 8.0)],
                         ids=["deeplab", "bilateral-only"])
def test_crf_marginals_equal_pydensecrf(params, deeplab_crf):
    image, label, probs = scene(seed=2)
    expected = pydensecrf_marginals(image, probs, params)
    if params == DEEPLAB:
        got = deeplab_crf.marginals(image, probs)
    else:
        with backend_tf.TensorFlowCrf(params, 4) as tf_crf:
            got = tf_crf.marginals(image, probs)
    assert got.shape == probs.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)  # measured 3.8e-6, 2.4e-7
    assert np.mean(got.argmax(-1) == expected.argmax(-1)) > 0.999
    # Not trivially equal to the input: the CRF changed labels, for the better.
    assert np.mean(expected.argmax(-1) != probs.argmax(-1)) > 0.05
    assert np.mean(got.argmax(-1) != label) < np.mean(probs.argmax(-1) != label)


def test_zero_iterations_is_the_softmax_of_the_unary():
    image, _, probs = scene(seed=3)
    probs[0, 0] = [1.0, 0.0, 0.0, 0.0]  # clipped to 1e-8, not -inf
    with backend_tf.TensorFlowCrf(DEEPLAB._replace(iterations=0), 4) as tf_crf:
        got = tf_crf.marginals(image, probs)
    np.testing.assert_allclose(got, softmax(np.log(np.clip(probs, 1e-8, 1))), atol=1e-6)


def test_one_graph_serves_different_image_sizes(deeplab_crf):
    image, _, probs = scene(seed=4, height=36, width=48)
    small_image, small_probs = image[5:25, 3:40], probs[5:25, 3:40]
    big = deeplab_crf.marginals(image, probs)
    graph = deeplab_crf._graphs[4][0].graph
    ops = len(graph.get_operations())
    small = deeplab_crf.marginals(small_image, small_probs)
    again = deeplab_crf.marginals(image, probs)
    assert len(deeplab_crf._graphs) == 1 and graph.finalized
    assert len(graph.get_operations()) == ops
    assert small.shape == small_probs.shape
    np.testing.assert_array_equal(again, big)
    np.testing.assert_allclose(small, pydensecrf_marginals(small_image, small_probs, DEEPLAB),
                               atol=1e-5)


def test_groups_dynamic_classes_and_float_image_do_not_change_the_result(deeplab_crf):
    """dense_crf_graph in a caller's graph: channels in 3 groups, a class
    count unknown until run time, a float image; the same marginals as the
    default graph (up to the order of float sums in the sparse products)."""
    image, _, probs = scene(seed=5)

    def build(img, p):
        p = tf.placeholder_with_default(p, [None, None, None])
        return backend_tf.dense_crf_graph(img, p, DEEPLAB, channel_groups=3)
    got = run(build, image.astype(np.float32), probs)
    np.testing.assert_allclose(got, deeplab_crf.marginals(image, probs), atol=1e-6)


def test_rejects_bad_inputs(deeplab_crf):
    image, _, probs = scene()
    with pytest.raises(ValueError, match="size"):
        deeplab_crf.marginals(image[:-1], probs)
    with pytest.raises(ValueError, match="RGB"):
        deeplab_crf.marginals(image[..., 0], probs)
    with pytest.raises(ValueError, match="positive"):
        backend_tf.pixel_features(3, 3, 0.0)


def test_keys_that_do_not_fit_int64_are_a_clear_error():
    # Features a million standard deviations apart in every dimension.
    features = np.array([[0.0] * 5, [1e6] * 5], np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="int64"):
        run(lambda f: permutohedral.PermutohedralLattice(f).offsets, features)


# --------------------------------------------------------------- VOC photo
@pytest.mark.slow
def test_voc_photo_labels_agree_with_pydensecrf():
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    path = os.path.join(VOC_SAMPLE, "2007_000129")
    if not os.path.exists(path + ".jpg"):
        pytest.skip("no VOC sample at %s" % VOC_SAMPLE)
    image = np.array(Image.open(path + ".jpg").convert("RGB"))
    # Network-like: the label pooled to 1/8, blurred, upsampled.
    probs = network_like_probs(np.array(Image.open(path + ".png")))
    height, width, classes = probs.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-8, 1)).reshape(-1, classes).T))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=image, compat=4)
    expected = np.array(crf.inference(10)).reshape(classes, height, width).transpose(1, 2, 0)
    with backend_tf.TensorFlowCrf(DEEPLAB, classes) as tf_crf:
        got = tf_crf.marginals(image, probs)
    # Every pixel: pydensecrf's two best classes are >= 4.5e-4 apart on this
    # photo, the marginals 1.4e-6 (measured).
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    assert np.mean(expected.argmax(-1) != probs.argmax(-1)) > 0.01
    assert np.abs(got - expected).max() < 3e-6


def test_dense_crf_backends_agree_through_the_entry_point():
    """``deeplab_resnet.crf.dense_crf(image, probs, params, backend=...)``."""
    pytest.importorskip("pydensecrf.densecrf")
    from deeplab_resnet import crf
    rng = np.random.RandomState(3)
    image = rng.randint(0, 256, (30, 41, 3)).astype(np.uint8)
    logits = rng.normal(size=(30, 41, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ours = crf.dense_crf(image, probs, crf.DEFAULTS, backend="tensorflow")
    theirs = crf.dense_crf(image, probs, crf.DEFAULTS, backend="pydensecrf")
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    with pytest.raises(ValueError, match="Unknown CRF backend"):
        crf.dense_crf(image, probs, crf.DEFAULTS, backend="densecrf")
