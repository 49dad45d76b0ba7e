"""The benchmark's report: the parts' figures checked against the project's targets, as a table.

Each part's module formats its own lines and checks its own targets (see
``parts``); this module puts them together in the table's order.
"""
from misc.benchmarks import parts


def check_targets(report):
    """[(description, measured text, met)] of every part's targets the report
    has figures for; ``met`` is None where a target does not apply on this
    machine (the measured text says why)."""
    return [target for part in parts.PARTS
            for target in parts.module(part).targets(report)]


def format_table(report):
    """The report as text: the machine, each part's lines, the targets."""
    lines = ["machine: %s" % report["machine"]]
    for part in parts.PARTS:
        lines += parts.module(part).lines(report)
    if report.get("targets"):
        lines += ["", "speed and memory targets"]
        lines += ["%-8s %-62s %s" % ({True: "[met]", None: "[n/a]"}.get(met, "[MISSED]"),
                                     description, measured)
                  for description, measured, met in report["targets"]]
    return "\n".join(lines)
