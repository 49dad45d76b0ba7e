"""CRF parameters: CrfConfig refuses values that would silently break the CRF,
and inference.py, evaluate.py and export.py refuse them as flags, before any work."""
import math
import pickle

import pytest
from conftest import load_script
from deeplab_resnet import crf

BAD_VALUES = [
    ("pos_w", float("nan")), ("pos_w", float("inf")), ("pos_w", -1.0),
    ("bi_w", float("nan")), ("bi_w", -0.5), ("bi_w", float("-inf")),
    ("pos_xy_std", 0.0), ("pos_xy_std", float("nan")), ("bi_xy_std", -3.0),
    ("bi_rgb_std", float("inf")), ("bi_rgb_std", 0.0),
    ("iterations", 0), ("iterations", -2), ("iterations", 2.5),
    ("iterations", float("nan")),
    ("prune_threshold", -0.01), ("prune_threshold", 1.5), ("prune_threshold", float("nan")),
]


@pytest.mark.parametrize("name, value", BAD_VALUES)
def test_crf_config_refuses_non_finite_negative_and_empty_values(name, value):
    with pytest.raises(ValueError, match=name):
        crf.CrfConfig(**{name: value})


def test_crf_config_keeps_valid_values_as_numbers_and_travels():
    config = crf.CrfConfig(iterations=5, pos_w=0, bi_w=10, bi_xy_std=20, bi_rgb_std=10,
                           prune_threshold=0)
    assert config.as_dict() == {"iterations": 5, "pos_w": 0.0, "pos_xy_std": 3.0,
                                "bi_w": 10.0, "bi_xy_std": 20.0, "bi_rgb_std": 10.0,
                                "prune_threshold": 0.0}
    assert isinstance(config.iterations, int) and isinstance(config.pos_w, float)
    # Hashable (one TensorFlow graph per config) and picklable (CRF workers).
    assert {config: 1}[crf.CrfConfig(5, 0.0, 3.0, 10.0, 20.0, 10.0, 0.0)] == 1
    assert pickle.loads(pickle.dumps(config)) == config
    assert crf.DEFAULTS == crf.CrfConfig(10, 3.0, 3.0, 4.0, 67.0, 3.0, 0.05)


BAD_FLAGS = [
    ("--crf-pos-w", "nan"), ("--crf-pos-w", "-1"), ("--crf-bi-w", "inf"),
    ("--crf-bi-w", "-0.1"), ("--crf-pos-xy-std", "0"), ("--crf-bi-xy-std", "nan"),
    ("--crf-bi-rgb-std", "inf"), ("--crf-iters", "0"), ("--crf-iters", "many"),
    ("--crf-prune-threshold", "-0.1"), ("--crf-prune-threshold", "1.01"),
]
SCRIPT_ARGS = {
    "inference": ["photo.jpg", "--model-weights", "missing.npz", "--crf"],
    "evaluate": ["--restore-from", "missing.npz", "--crf"],
    "export": ["--restore-from", "missing.npz", "--crf"],
}


@pytest.mark.parametrize("script", sorted(SCRIPT_ARGS))
@pytest.mark.parametrize("flag, value", BAD_FLAGS)
def test_scripts_refuse_bad_crf_flags_while_parsing(script, flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).get_arguments(SCRIPT_ARGS[script] + [flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument %s" % flag in err and value in err


@pytest.mark.parametrize("script", sorted(SCRIPT_ARGS))
def test_scripts_accept_zero_weights_and_finite_values(script):
    args = load_script(script).get_arguments(
        SCRIPT_ARGS[script] + ["--crf-pos-w", "0", "--crf-bi-w", "1e3",
                               "--crf-bi-rgb-std", "0.5", "--crf-iters", "1",
                               "--crf-prune-threshold", "0"])
    assert (args.crf_pos_w, args.crf_bi_w, args.crf_bi_rgb_std, args.crf_iters,
            args.crf_prune_threshold) == (0.0, 1000.0, 0.5, 1, 0.0)
    assert not math.isnan(args.crf_pos_xy_std)
