"""DeepLab-v2 (ResNet-101 + ASPP) for semantic segmentation, in TF1-style graph mode.

The package has one module per job; the first line of each module's
docstring names it. Importing the package imports nothing: modules that need
only numpy (``constants``, ``cli``, ``metrics``, ``files``, ``images``,
``crf``, the label tools in ``data``) load without TensorFlow, and every
module that builds graphs takes TensorFlow from ``runtime``, which switches
it to graph mode once.
"""
__version__ = "2.0.0"
