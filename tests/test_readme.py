"""The README and docs/ say what the code does: flag tables, links, the quick-start commands."""
import os
import re

from conftest import REPO_ROOT
from deeplab_resnet.testing import load_script

flag_tables = load_script(os.path.join(REPO_ROOT, "misc", "flag_tables.py"))


def read(path):
    with open(os.path.join(REPO_ROOT, path)) as f:
        return f.read()


def test_flag_tables_match_every_scripts_parser():
    page = read(os.path.join("docs", "flags.md"))
    assert flag_tables.render(page) == page, (
        "A flag table in docs/flags.md is stale: run python misc/flag_tables.py")


def test_the_front_page_is_short_and_every_link_resolves():
    """README.md stays a front page; it and every docs/ page link only to
    files that exist."""
    readme = read("README.md")
    assert len(readme.splitlines()) < 300
    pages = ["README.md"] + [os.path.join("docs", name)
                             for name in sorted(os.listdir(os.path.join(REPO_ROOT, "docs")))]
    checked = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(page)):
            if "://" in target:
                continue
            path = os.path.normpath(os.path.join(REPO_ROOT, os.path.dirname(page), target))
            assert os.path.exists(path), "%s links to %s, which does not exist" % (page,
                                                                                     target)
            checked += 1
    assert checked >= 10


def test_flag_tables_list_each_flag_of_a_parser():
    parser = flag_tables.script_parser("evaluate.py", "get_arguments")
    table = flag_tables.flag_table(parser)
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    assert "--restore-from" in flags and "--crf-iters" in flags
    for flag in flags:
        if flag != "--help":
            assert "`%s" % flag in table


def test_ci_runs_the_readme_test_command():
    stages = [line.strip() for line in read(".ci/run").splitlines()
              if line.startswith("stage ")]
    assert stages == ["stage bash scripts/test.sh", "stage bash scripts/test.sh -m slow"]
    quick_start = read("README.md").split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "bash scripts/test.sh" in quick_start
    assert "bash scripts/demo.sh" in quick_start


def test_the_docs_give_the_number_of_labels_training_checks():
    """docs/data.md once said 100 where the code checked 1,000."""
    from deeplab_resnet.training import loop
    assert loop.CHECKED_LABELS == 1000
    count = "{:,}".format(loop.CHECKED_LABELS)
    assert "same check on up to %s labels before its first step" % count in read(
        os.path.join("docs", "data.md"))
    assert "up to %s pairs" % count in read(os.path.join("docs", "training.md"))


def requirement_lines(path):
    return sorted(line.split("#")[0].strip() for line in read(path).splitlines()
                  if line.split("#")[0].strip() and not line.startswith("-r"))


def test_the_package_declares_what_the_requirements_files_pin():
    """`pip install .` installs the runtime requirements.txt pins (tensorboard
    and the CRF's default backend included), its extras the optional files'
    pins, and it claims no Python on which numpy 2.4 and scipy 1.17 cannot
    install."""
    import tomllib
    project = tomllib.loads(read("pyproject.toml"))["project"]
    assert sorted(project["dependencies"]) == requirement_lines("requirements.txt")
    extras = project["optional-dependencies"]
    assert sorted(extras["download"]) == requirement_lines("requirements-download.txt")
    assert sorted(extras["onnx"]) == requirement_lines("requirements-onnx.txt")
    assert project["requires-python"] == ">=3.11"
    assert "bash .ci/run" in read(".travis.yml")
