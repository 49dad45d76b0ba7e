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


# (script, its parse function, required flags, the output directory flag)
OUTPUT_DIRS = [
    ("train", "get_arguments", [], "--snapshot-dir"),
    ("evaluate", "get_arguments", REQUIRED["evaluate"], "--save-dir"),
    ("inference", "get_arguments", REQUIRED["inference"], "--save-dir"),
    ("export", "get_arguments", ["--restore-from", "w.npz"], "--output-dir"),
    ("dataset/download_voc", "parse_args", [], "--root"),
    ("dataset/build_voc_lists", "parse_args", ["--voc-dir", "v", "--sbd-dir", "s"],
     "--output-dir"),
    ("dataset/make_demo", "parse_args", [], "--output-dir"),
]


@pytest.mark.parametrize("script, function, required, flag", OUTPUT_DIRS)
def test_an_output_directory_that_is_a_file_is_refused_naming_the_flag(
        tmp_path, capsys, script, function, required, flag):
    parse = getattr(load_script(script), function)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for path, message in ((a_file, "is a file, not a directory"),
                          (a_file / "sub", "cannot be created: %s is a file" % a_file)):
        with pytest.raises(SystemExit) as exit_info:
            parse(required + [flag, str(path)])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert "argument %s: %s %s" % (flag, path, message) in error, error
    assert getattr(parse(required + [flag, str(tmp_path / "new" / "dir")]),
                   flag.lstrip("-").replace("-", "_")) == str(tmp_path / "new" / "dir")


@pytest.mark.parametrize("script, function, required", [
    ("train", "get_arguments", []), ("evaluate", "get_arguments", REQUIRED["evaluate"]),
    ("dataset/check_labels", "parse_args", [])])
def test_an_ignore_label_an_8_bit_label_cannot_hold_is_refused(capsys, script, function,
                                                               required):
    parse = getattr(load_script(script), function)
    for value in ("300", "-1"):
        with pytest.raises(SystemExit):
            parse(required + ["--ignore-label", value])
        assert ("argument --ignore-label: must be 0..255 (label files hold 8-bit values), "
                "got %s" % value) in capsys.readouterr().err
    assert parse(required + ["--ignore-label", "0"]).ignore_label == 0
