"""Write the measured tables of README.md and docs/ from the records in results/.

Each table sits between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->``
markers, in any page. ``python misc/figure_tables.py`` rewrites every block from
the records (misc/benchmarks/records.py); tests/test_records.py fails when a
block differs from what the records give, when a page names a record that
does not exist, or when a block has no table here. A block ends with the
records it came from; prose that cites a figure names its record too.

Where several CPUs have records, a table has one column per CPU, each from
that CPU's newest record holding the figures.
"""
import argparse
import os
import re
import sys

# Run as `python misc/figure_tables.py` without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from misc.benchmarks import records as records_module  # noqa: E402
from misc import figure_renderers  # noqa: E402

ROOT = records_module.ROOT
PAGES = ("README.md",) + tuple(
    os.path.join("docs", name) for name in sorted(os.listdir(os.path.join(ROOT, "docs")))
    if name.endswith(".md"))
BLOCK = re.compile(r"(<!-- figures:([a-z0-9-]+) -->\n).*?(<!-- /figures:\2 -->)", re.DOTALL)
RECORD_NAME = re.compile(r"results/([0-9A-Za-z_.-]+?)\.json")


def render(text, records):
    """``text`` with every figures block regenerated from ``records``."""
    def block(match):
        name = match.group(2)
        if name not in figure_renderers.TABLES:
            raise ValueError("no table called %r in misc/figure_renderers.py (a block "
                             "<!-- figures:%s --> names it)" % (name, name))
        body, used = figure_renderers.TABLES[name](records)
        cited = "Records: %s." % ", ".join("`results/%s.json`" % n for n in used) \
            if used else "No record has these figures yet."
        body = body.rstrip("\n") + "\n\n" if used else ""
        return "%s%s%s\n%s" % (match.group(1), body, cited, match.group(3))
    return BLOCK.sub(block, text)


def missing_records(text, records):
    """The record names ``text`` cites (results/NAME.json) that do not exist."""
    return sorted(set(RECORD_NAME.findall(text)) - set(records))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="Change nothing; exit 1 if a block is stale or a cited "
                             "record is missing (default: rewrite the blocks).")
    args = parser.parse_args(argv)
    records = records_module.load_all()
    stale = []
    for page in PAGES:
        path = os.path.join(ROOT, page)
        with open(path) as f:
            text = f.read()
        new = render(text, records)
        missing = missing_records(new, records)
        if missing:
            stale.append("%s cites missing records: %s" % (page, ", ".join(missing)))
        if new != text:
            if args.check:
                stale.append("%s has stale figures" % page)
            else:
                with open(path, "w") as f:
                    f.write(new)
                print("rewrote %s" % page)
    for line in stale:
        print(line, file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
