"""Write docs/flags.md's flag tables from the scripts' own argument parsers.

Each table sits between ``<!-- flags:SCRIPT -->`` and ``<!-- /flags:SCRIPT -->``
markers in docs/flags.md. ``python misc/flag_tables.py`` rewrites them in place;
tests/test_readme.py fails when one no longer matches its script, so the
docs/flags.md cannot drift from ``--help``.
"""
import argparse
import os
import re
import sys

# Run as `python misc/flag_tables.py` without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab_resnet.testing import load_script  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS_PAGE = os.path.join(ROOT, "docs", "flags.md")
# Script -> the function that builds its parser and parses the command line.
SCRIPTS = (
    ("train.py", "get_arguments"),
    ("evaluate.py", "get_arguments"),
    ("inference.py", "get_arguments"),
    ("convert.py", "parse_args"),
    ("export.py", "get_arguments"),
    ("dataset/build_voc_lists.py", "parse_args"),
    ("dataset/download_voc.py", "parse_args"),
    ("dataset/check_labels.py", "parse_args"),
    ("dataset/make_demo.py", "parse_args"),
    ("misc/benchmark.py", "get_arguments"),
)


class _Captured(Exception):
    def __init__(self, parser):
        super(_Captured, self).__init__()
        self.parser = parser


def script_parser(script, function):
    """The ArgumentParser ``script.function`` builds, caught at parse time."""
    module = load_script(os.path.join(ROOT, script))

    def capture(parser, *args, **kwargs):
        raise _Captured(parser)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        getattr(module, function)()
    except _Captured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise RuntimeError("%s.%s() never parsed its arguments." % (script, function))


def flag_table(parser):
    """A Markdown table: each flag (or positional) and its expanded help."""
    formatter = parser._get_formatter()
    rows = ["| flag | meaning |", "| --- | --- |"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(action.option_strings) or action.dest
        if action.nargs != 0 and action.option_strings:
            names += " " + formatter._format_args(action, action.dest.upper())
        text = " ".join(formatter._expand_help(action).split()) if action.help else ""
        rows.append("| `%s` | %s |" % (names, text.replace("|", "\\|")))
    return "\n".join(rows)


def render(readme_text):
    """``readme_text`` with every flag table regenerated."""
    for script, function in SCRIPTS:
        start, end = "<!-- flags:%s -->" % script, "<!-- /flags:%s -->" % script
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
        if not pattern.search(readme_text):
            raise ValueError("docs/flags.md has no %s ... %s block." % (start, end))
        table = flag_table(script_parser(script, function))
        readme_text = pattern.sub(lambda _: "%s\n%s\n%s" % (start, table, end),
                                  readme_text)
    return readme_text


def main():
    with open(FLAGS_PAGE) as f:
        text = f.read()
    updated = render(text)
    if updated != text:
        with open(FLAGS_PAGE + ".tmp", "w") as f:
            f.write(updated)
        os.replace(FLAGS_PAGE + ".tmp", FLAGS_PAGE)
        print("docs/flags.md flag tables rewritten.")
    else:
        print("docs/flags.md flag tables are up to date.")


if __name__ == "__main__":
    main()
