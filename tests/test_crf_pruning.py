"""Class pruning of the dense CRF (crf.pruning) against independent computations.

* the rule on hand-made peaks;
* threshold 0 is pydensecrf's unpruned CRF, bit for bit;
* the folded model equals the full CRF with the pruned classes' pairwise
  terms switched off (each in its own channel, zero compatibility);
* agreement with the unpruned CRF on network-like probabilities.
"""
import os

import numpy as np
import pytest
from conftest import SHARED_SAMPLE
from PIL import Image

from deeplab_resnet import crf
from deeplab_resnet.crf import pruning
from deeplab_resnet.testing import network_like_probs

dcrf = pytest.importorskip("pydensecrf.densecrf")

UNPRUNED = crf.CrfConfig(prune_threshold=0.0)


def peaks_probs(peaks, height=2, width=3):
    """Probabilities whose class c reaches peaks[c] at pixel 0 and is small elsewhere."""
    probs = np.full((height, width, len(peaks)), 1e-3, np.float32)
    probs[0, 0] = peaks
    return probs


def test_kept_classes_rule():
    probs = peaks_probs([0.6, 0.04, 0.05, 0.3, 0.01])
    assert pruning.kept_classes(probs, 0.05).tolist() == [0, 2, 3]
    assert pruning.kept_classes(probs, 0.0).tolist() == [0, 1, 2, 3, 4]
    # Fewer than two reach it: the two largest peaks, in class order.
    assert pruning.kept_classes(probs, 0.5).tolist() == [0, 3]
    assert pruning.kept_classes(probs, 1.0).tolist() == [0, 3]
    # A tie for second place goes to the lower index.
    assert pruning.kept_classes(peaks_probs([0.1, 0.7, 0.1, 0.1]), 0.9).tolist() == [0, 1]
    assert pruning.kept_classes(peaks_probs([0.9, 0.1]), 0.5).tolist() == [0, 1]


def test_folded_probs_and_full_marginals():
    probs = peaks_probs([0.6, 0.04, 0.05, 0.3, 0.01])
    folded = pruning.folded_probs(probs, np.array([0, 2, 3]))
    assert folded.shape == (2, 3, 4)
    np.testing.assert_allclose(folded[0, 0], [0.6, 0.05, 0.3, 0.05], rtol=1e-6)
    np.testing.assert_allclose(folded[1, 2], [1e-3, 1e-3, 1e-3, 2e-3], rtol=1e-6)
    marginals = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    full = pruning.full_marginals(marginals, np.array([0, 2, 3]), 5)
    assert full.shape == (2, 3, 5) and full.dtype == np.float32
    np.testing.assert_array_equal(full[..., [0, 2, 3]], marginals[..., :3])
    assert not full[..., [1, 4]].any()


def reference_crf(image, probs, params, compat=None):
    """pydensecrf called directly; ``compat``: per-class diagonal
    compatibilities (pydensecrf's sign) instead of Potts."""
    height, width, classes = probs.shape
    model = dcrf.DenseCRF2D(width, height, classes)
    model.setUnaryEnergy(np.ascontiguousarray(
        -np.log(np.clip(probs, 1e-8, 1)).reshape(-1, classes).T.astype(np.float32)))
    pos, bi = params.pos_w, params.bi_w
    if compat is not None:
        pos, bi = (np.where(compat, -w, 0.0).astype(np.float32) for w in (pos, bi))
    model.addPairwiseGaussian(sxy=params.pos_xy_std, compat=pos)
    model.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
                               rgbim=np.ascontiguousarray(image), compat=bi)
    return np.array(model.inference(params.iterations)).reshape(
        classes, height, width).transpose(1, 2, 0)


def scene(seed=0, height=40, width=56, classes=21, temperature=0.25):
    """A photo of three flat regions (classes 0, 5, 9) with noise, and
    network-like probabilities of its label."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:height, :width]
    label = np.zeros((height, width), np.uint8)
    label[:, width // 2:] = 5
    label[(yy - height // 2) ** 2 + (xx - width // 4) ** 2 < (height // 4) ** 2] = 9
    colours = np.array([[40, 60, 200], [220, 200, 30], [30, 160, 40]])
    image = colours[np.searchsorted([0, 5, 9], label)] + rng.normal(0, 10, (height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, label, network_like_probs(label, classes, factor=4,
                                            temperature=temperature)


def test_threshold_zero_is_the_unpruned_crf_exactly():
    image, _, probs = scene()
    expected = reference_crf(image, probs, UNPRUNED)
    np.testing.assert_array_equal(crf.dense_crf(image, probs, UNPRUNED, "pydensecrf"), expected)


def test_folding_is_the_crf_with_the_pruned_classes_pairwise_terms_off():
    image, _, probs = scene(seed=1)
    params = crf.CrfConfig(prune_threshold=0.05)
    kept = pruning.kept_classes(probs, params.prune_threshold)
    assert kept.tolist() == [0, 5, 9]
    switched_off = np.isin(np.arange(21), kept)
    expected = reference_crf(image, probs, params, compat=switched_off)
    got = crf.dense_crf(image, probs, params, "pydensecrf")
    assert got.shape == probs.shape
    assert not got[..., ~switched_off].any()
    # Same model, the 18 pruned channels summed into one: float32 rounding.
    np.testing.assert_allclose(got[..., kept], expected[..., kept], atol=2e-6)


@pytest.mark.parametrize("temperature", [0.25, 0.1])
def test_pruned_labels_agree_with_the_unpruned_crf(temperature):
    image, label, probs = scene(seed=2, temperature=temperature)
    full = crf.dense_crf(image, probs, UNPRUNED, "pydensecrf").argmax(-1)
    pruned = crf.dense_crf(image, probs, crf.DEFAULTS, "pydensecrf").argmax(-1)
    assert crf.DEFAULTS.prune_threshold > 0
    assert len(pruning.kept_classes(probs, crf.DEFAULTS.prune_threshold)) == 3
    assert np.mean(pruned == full) >= 0.999
    # The CRF did something for agreement to mean something.
    assert np.mean(full != probs.argmax(-1)) > 0.005


def voc_photo(temperature):
    path = os.path.join(SHARED_SAMPLE, "2007_000129")
    if not os.path.exists(path + ".jpg"):
        pytest.skip("no VOC sample at %s" % SHARED_SAMPLE)
    image = np.array(Image.open(path + ".jpg").convert("RGB"))
    label = np.array(Image.open(path + ".png"))
    return image, label, network_like_probs(label, temperature=temperature)


@pytest.mark.slow
@pytest.mark.parametrize("backend", crf.BACKENDS)
@pytest.mark.parametrize("temperature", [0.25, 0.1])
def test_voc_photo_pruned_labels_agree_with_the_unpruned_crf(temperature, backend):
    # Against DeepLab's CRF: pydensecrf, unpruned.
    image, label, probs = voc_photo(temperature)
    assert pruning.kept_classes(probs, crf.DEFAULTS.prune_threshold).tolist() == [0, 2, 15]
    full = crf.dense_crf(image, probs, UNPRUNED, "pydensecrf").argmax(-1)
    pruned = crf.dense_crf(image, probs, crf.DEFAULTS, backend).argmax(-1)
    # Measured: 99.998% at temperature 0.25, 100% at 0.1.
    assert np.mean(pruned == full) >= 0.9995


# ---------------------------------------------------- the TensorFlow backend
@pytest.fixture(scope="module")
def tf_crfs():
    """The TensorFlow CRF, pruned (the default threshold) and unpruned, 21 classes."""
    from deeplab_resnet.crf import backend_tf
    with backend_tf.TensorFlowCrf(crf.DEFAULTS, 21) as pruned, \
            backend_tf.TensorFlowCrf(UNPRUNED, 21) as full:
        yield pruned, full


def test_graph_rule_equals_the_numpy_rule():
    from deeplab_resnet.crf import backend_tf
    from deeplab_resnet.runtime import tf
    cases = [([0.6, 0.04, 0.05, 0.3, 0.01], 0.05), ([0.6, 0.04, 0.05, 0.3, 0.01], 0.5),
             ([0.1, 0.7, 0.1, 0.1], 0.9), ([0.2, 0.2, 0.2, 0.2], 0.3)]
    with tf.Graph().as_default(), tf.Session() as session:
        flat = tf.placeholder(tf.float32, [None, None])
        for peaks, threshold in cases:
            probs = peaks_probs(peaks)
            got = session.run(backend_tf.kept_classes_graph(flat, threshold),
                              {flat: probs.reshape(-1, len(peaks))})
            assert got.tolist() == pruning.kept_classes(probs, threshold).tolist()


def test_tensorflow_threshold_zero_is_the_unpruned_graph(tf_crfs):
    # The unpruned graph (held to pydensecrf by tests/test_crf_lattice.py)
    # has no pruning ops; the pruned one scatters the kept classes back.
    pruned, full = tf_crfs
    types = [{op.type for op in crf_._graphs[21][0].graph.get_operations()}
             for crf_ in (pruned, full)]
    assert "TensorScatterUpdate" in types[0] and "TensorScatterUpdate" not in types[1]
    image, _, probs = scene(seed=3)
    np.testing.assert_allclose(full.marginals(image, probs), reference_crf(image, probs, UNPRUNED),
                               atol=1e-5)


def test_tensorflow_pruned_equals_pydensecrf_pruned(tf_crfs):
    pruned, full = tf_crfs
    for seed, temperature in ((4, 0.25), (5, 0.1)):
        image, _, probs = scene(seed=seed, temperature=temperature)
        got = pruned.marginals(image, probs)
        expected = crf.dense_crf(image, probs, crf.DEFAULTS, "pydensecrf")
        assert got.shape == probs.shape
        assert not got[..., [c for c in range(21) if c not in (0, 5, 9)]].any()
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert np.mean(got.argmax(-1) == full.marginals(image, probs).argmax(-1)) >= 0.999
        # Labels taken in the graph, over the kept classes: the marginals' argmax.
        for tf_crf in tf_crfs:
            labels = tf_crf.labels(image, probs)
            assert labels.dtype == np.int32
            np.testing.assert_array_equal(labels, tf_crf.marginals(image, probs).argmax(-1))


def test_tensorflow_pruning_keeps_at_least_two_classes(tf_crfs):
    pruned, _ = tf_crfs
    image, _, probs = scene(seed=6)
    # One class everywhere (its peak the only one above the threshold).
    probs = np.full_like(probs, 0.01 / 20)
    probs[..., 7] = 0.99
    probs[3, 4, 12] += 0.002  # class 12 has the second largest peak
    got = pruned.marginals(image, probs)
    assert set(np.flatnonzero(got.reshape(-1, 21).max(0))) == {7, 12}
    np.testing.assert_allclose(got, crf.dense_crf(image, probs, crf.DEFAULTS, "pydensecrf"),
                               atol=1e-5)
