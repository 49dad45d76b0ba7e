"""Measure the demo or the test suites and write a record of it into results/.

  python misc/record.py demo     # bash scripts/demo.sh in a fresh directory: its mIoU and time
  python misc/record.py tests    # both CI stages: bash scripts/test.sh, then -m slow

The record (misc/benchmarks/records.py) holds the machine, the software, the
commit, the date, the load before and after, the commands and the figures;
``python misc/figure_tables.py`` then writes them into README.md and docs/.
Measure on an otherwise idle machine: the load is recorded, not corrected for.
``misc/benchmark.py --record`` makes the benchmark's records.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from misc.benchmarks import records  # noqa: E402

ROOT = records.ROOT
MIOU = re.compile(r"^mIoU ([0-9.]+)\s*$", re.M)
# pytest's closing line, e.g. "==== 412 passed, 1 skipped in 598.21s (0:09:58) ====".
PYTEST_SUMMARY = re.compile(r"^=+ (.*\d+ (?:passed|failed).*?) in [0-9.]+s.*=+\s*$", re.M)
STAGES = (("fast suite (bash scripts/test.sh)", ["bash", "scripts/test.sh"]),
          ("slow set (bash scripts/test.sh -m slow)", ["bash", "scripts/test.sh", "-m", "slow"]))


def timed(command):
    """(seconds, exit code, output) of ``command`` run from the root; its
    output is passed through as it comes and kept."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    kept = []
    for line in process.stdout:
        sys.stdout.write(line)
        kept.append(line)
    return time.perf_counter() - start, process.wait(), "".join(kept)


def measure_demo():
    """The demo from scratch (a fresh output directory): mIoU and seconds."""
    with tempfile.TemporaryDirectory(prefix="deeplab_demo_") as directory:
        command = ["bash", "scripts/demo.sh", "--output-dir", directory]
        seconds, code, output = timed(command)
    found = MIOU.findall(output)
    if code != 0 or not found:
        raise SystemExit("the demo failed (exit code %d); no record written" % code)
    return {"miou": float(found[-1]), "seconds": round(seconds, 1)}, command


def measure_tests():
    """Each CI stage: seconds, exit code and pytest's closing summary."""
    stages = {}
    for name, command in STAGES:
        seconds, code, output = timed(command)
        summary = PYTEST_SUMMARY.findall(output)
        stages[name] = {"command": " ".join(command), "seconds": round(seconds, 1),
                        "exit_code": code, "summary": summary[-1] if summary else None}
    return {"stages": stages}, ["python", "misc/record.py", "tests"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("demo", "tests"), help="What to measure.")
    parser.add_argument("--record", default=records.DIRECTORY, metavar="DIR",
                        help="Where the record goes (default: the repository's results/).")
    args = parser.parse_args(argv)
    load_before = records.load_average()
    figures, command = measure_demo() if args.what == "demo" else measure_tests()
    path = records.write(records.make(args.what, figures, command, load_before), args.record)
    print("record: %s" % path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
