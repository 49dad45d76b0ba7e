"""Flag values a user can get wrong are refused at parse time, naming the flag."""
import pytest

from conftest import load_script

SCRIPTS = {name: load_script(name) for name in ("train", "evaluate", "inference")}
REQUIRED = {"train": [], "evaluate": ["--restore-from", "w.npz"],
            "inference": ["photo.jpg", "--model-weights", "w.npz"]}


def parse_error(script, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        SCRIPTS[script].get_arguments(REQUIRED[script] + argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.parametrize("flag", ["--intra-op-threads", "--inter-op-threads"])
def test_a_negative_thread_count_is_refused_at_parse_time(script, flag, capsys):
    assert "argument %s: must be 0 or more, got -1" % flag in parse_error(
        script, [flag, "-1"], capsys)
    args = SCRIPTS[script].get_arguments(REQUIRED[script] + [flag, "0"])
    assert (args.intra_op_threads, args.inter_op_threads) == (0, 0)
