"""Dense CRF: it recovers boundaries from a noisy unary; flags and errors."""
import argparse
import sys
import types

import numpy as np
import pytest
from deeplab_resnet import cli
from deeplab_resnet import crf
from deeplab_resnet.crf import backend_pydensecrf
from helpers.crf_scenes import synthetic_scene


pytest.importorskip("pydensecrf.densecrf")


@pytest.mark.parametrize("backend", crf.BACKENDS)
def test_crf_recovers_region_boundaries_better_than_argmax(backend):
    image, label, probs = synthetic_scene()
    assert not image.flags.writeable
    argmax_error = np.mean(probs.argmax(axis=-1) != label)
    marginals = crf.dense_crf(image, probs, backend=backend)
    crf_error = np.mean(marginals.argmax(axis=-1) != label)
    assert argmax_error > 0.3
    assert crf_error < argmax_error / 5
    assert marginals.shape == probs.shape and marginals.dtype == np.float32
    np.testing.assert_allclose(marginals.sum(axis=-1), 1.0, atol=1e-4)


def test_crf_with_zero_iterations_keeps_the_argmax():
    # CrfConfig wants at least one iteration; the backend reads any object.
    image, _, probs = synthetic_scene(seed=1)
    params = types.SimpleNamespace(**dict(crf.DEFAULTS.as_dict(), iterations=0))
    marginals = backend_pydensecrf.marginals(image, probs, params)
    np.testing.assert_array_equal(marginals.argmax(-1), probs.argmax(-1))


def test_unary_is_negative_log_probability_in_pydensecrf_layout():
    probs = np.random.RandomState(0).dirichlet([1, 1, 1], size=(4, 5))
    unary = crf.unary_from_probs(probs)
    assert unary.shape == (3, 20) and unary.dtype == np.float32
    assert unary.flags.c_contiguous
    np.testing.assert_allclose(unary[2, 7], -np.log(probs[1, 2, 2]), rtol=1e-5)
    # A zero probability is a large finite energy.
    assert np.isfinite(crf.unary_from_probs(np.array([[[1.0, 0.0]]]))).all()


@pytest.mark.parametrize("backend", crf.BACKENDS)
def test_crf_rejects_mismatched_sizes(backend):
    image, _, probs = synthetic_scene()
    with pytest.raises(ValueError, match="size"):
        crf.dense_crf(image[:-1], probs, backend=backend)
    with pytest.raises(ValueError, match="RGB"):
        crf.dense_crf(image[..., 0], probs, backend=backend)


def test_flags_default_to_deeplab_values_and_build_params(capsys):
    parser = argparse.ArgumentParser()
    cli.add_crf_flags(parser)
    assert cli.crf_config(parser.parse_args([])) is None
    params = cli.crf_config(parser.parse_args(["--crf"]))
    assert params == crf.CrfConfig(iterations=10, pos_w=3, pos_xy_std=3, bi_w=4,
                                   bi_xy_std=67, bi_rgb_std=3)
    params = cli.crf_config(parser.parse_args(
        ["--crf", "--crf-iters", "5", "--crf-bi-xy-std", "121",
         "--crf-bi-rgb-std", "5"]))
    assert (params.iterations, params.bi_xy_std, params.bi_rgb_std) == (5, 121, 5)
    assert params.prune_threshold == crf.DEFAULTS.prune_threshold
    params = cli.crf_config(parser.parse_args(["--crf", "--crf-prune-threshold", "0"]))
    assert params.prune_threshold == 0.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--crf", "--crf-bi-rgb-std", "0"])
    assert "--crf-bi-rgb-std" in capsys.readouterr().err


def test_missing_pydensecrf_is_a_clear_error(monkeypatch):
    # A None entry in sys.modules makes the import fail, as if not installed.
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image, _, probs = synthetic_scene()
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        crf.dense_crf(image, probs, backend="pydensecrf")
    parser = argparse.ArgumentParser()
    cli.add_crf_flags(parser)
    assert cli.crf_config(parser.parse_args([])) is None
    with pytest.raises(ValueError, match="pip install pydensecrf2.*--crf-backend tensorflow"):
        cli.crf_config(parser.parse_args(["--crf", "--crf-backend", "pydensecrf"]))
    # The default backend needs nothing more.
    assert crf.DEFAULT_BACKEND == "tensorflow"
    assert cli.crf_config(parser.parse_args(["--crf"])) == crf.DEFAULTS
    assert crf.dense_crf(image, probs).shape == probs.shape
    # The TensorFlow backend needs nothing more.
    params = cli.crf_config(parser.parse_args(["--crf", "--crf-backend", "tensorflow"]))
    assert params == crf.DEFAULTS
