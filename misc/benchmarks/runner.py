"""Run the chosen parts of the benchmark, in the table's order, into one report."""
import collections
import tempfile

from misc.benchmarks import parts, report
from misc.benchmarks.common import Run, machine_description, size_name
from misc.benchmarks.opencv import opencv_version


def measure(settings):
    """The JSON report of ``settings.parts`` (an ``options.Settings``):
    machine, sizes, each part's figures, and the targets checked.

    Weights are random (He-initialised; speed does not depend on their
    values), written once into a scratch directory by the first part that
    needs them, with the Caffe files when OpenCV is to run.
    """
    cv_version = opencv_version()
    result = collections.OrderedDict(machine=machine_description(cv_version),
                                     sizes=[size_name(s) for s in settings.sizes])
    with tempfile.TemporaryDirectory(prefix="deeplab_benchmark_") as directory:
        run = Run(settings, directory,
                  caffe="opencv" in settings.parts and cv_version is not None)
        for name in settings.parts:
            result.update(parts.module(name).measure(run))
    result["targets"] = report.check_targets(result)
    return result
