"""DeepLab-v2: ResNet-101 with atrous convolution and the ASPP classifier.

Follows the deploy net of Chen et al., "DeepLab: Semantic Image Segmentation
with Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs"
(TPAMI 2017), as released in Caffe, layer for layer and name for name:

* MSRA's ResNet-101: conv1 7x7/2 (pad 3), pool1 3x3/2 (pad 1, ceil), then
  bottleneck stages res2..res5 with 3/4/23/3 blocks. As in MSRA's model (and
  unlike torchvision's), the stride-2 of res3a sits in the first 1x1 of
  branch2 and in branch1.
* Output stride 8: res4 and res5 keep stride 1 and dilate their 3x3
  convolutions by 2 and 4 instead.
* ASPP: four 3x3 classifiers ``fc1_voc12_c0..c3`` with dilations 6/12/18/24
  on ``res5c``, summed into ``fc1_voc12``.

A 321x321 input gives 41x41 logits; 500x375 gives 63x48.

``ModelConfig`` lets tests and the demo build the same code path with fewer
blocks or narrower layers; the defaults are DeepLab-v2's.
"""
import collections

from deeplab_resnet.constants import CLASSIFIER_PREFIX
from deeplab_resnet.network import Network

RESNET101_BLOCKS = (3, 4, 23, 3)
ASPP_RATES = (6, 12, 18, 24)


class ModelConfig(collections.namedtuple(
        "ModelConfig", ["blocks", "base_depth", "aspp_rates"])):
    """Architecture hyper-parameters; checkpoints store them to rebuild the net.

    Attributes:
      blocks: bottleneck blocks in res2, res3, res4, res5.
      base_depth: inner width of res2's bottlenecks (64 in ResNet); each later
        stage doubles it, and block outputs are 4x the inner width.
      aspp_rates: dilation of each ASPP branch.
    """

    def __new__(cls, blocks=RESNET101_BLOCKS, base_depth=64, aspp_rates=ASPP_RATES):
        blocks = tuple(int(b) for b in blocks)
        aspp_rates = tuple(int(r) for r in aspp_rates)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError("blocks must be four positive counts (res2..res5), "
                             "got %r." % (blocks,))
        if base_depth < 1 or not aspp_rates:
            raise ValueError("base_depth must be positive and aspp_rates non-empty.")
        return super(ModelConfig, cls).__new__(cls, blocks, int(base_depth), aspp_rates)

    def to_dict(self):
        return {"blocks": list(self.blocks), "base_depth": self.base_depth,
                "aspp_rates": list(self.aspp_rates)}


def block_names(stage, count):
    """Caffe's block suffixes: 'a', 'b', 'c' or, for long stages, 'a', 'b1', 'b2'...

    ResNet-101 names res3 and res4 blocks res3b1..res3b3 and res4b1..res4b22.
    """
    if count <= 3:
        return ["%d%s" % (stage, "abc"[i]) for i in range(count)]
    return ["%da" % stage] + ["%db%d" % (stage, i) for i in range(1, count)]


class DeepLabResNetModel(Network):
    """DeepLab-v2 ResNet-101. Feed ``{'data': bgr_minus_mean}``; logits in
    ``layers['fc1_voc12']`` at 1/8 of the input size (Caffe rounding).

    ``config`` is a ``ModelConfig``; the default is the published network.
    """

    def __init__(self, inputs, num_classes, is_training=False, config=None, **kwargs):
        super(DeepLabResNetModel, self).__init__(
            inputs, num_classes, is_training=is_training,
            config=config or ModelConfig(), **kwargs)

    def setup(self):
        (self.feed("data")
             .conv(7, 7, 64, 2, 2, padding=3, biased=False, relu=False, name="conv1")
             .batch_normalization(relu=True, name="bn_conv1")
             .max_pool(3, 3, 2, 2, padding=1, name="pool1"))
        previous = "pool1"
        # (stage, stride of its first block, dilation of its 3x3 convolutions)
        stages = ((2, 1, 1), (3, 2, 1), (4, 1, 2), (5, 1, 4))
        for (stage, stride, dilation), count in zip(stages, self.config.blocks):
            depth = self.config.base_depth * 2 ** (stage - 2)
            for i, block in enumerate(block_names(stage, count)):
                previous = self.bottleneck(previous, block, depth,
                                           stride if i == 0 else 1, dilation,
                                           project=i == 0)
        # fc1_voc12_c0..c3, one per rate, summed into fc1_voc12.
        names = ["fc1_voc12_c%d" % i for i in range(len(self.config.aspp_rates))]
        self.feed(previous).atrous_conv_sum(3, 3, self.num_classes, self.config.aspp_rates,
                                            names, name="fc1_voc12")

    def bottleneck(self, input_name, block, depth, stride, dilation, project):
        """One MSRA bottleneck ``res<block>``; returns the name of its output."""
        if project:
            (self.feed(input_name)
                 .conv(1, 1, 4 * depth, stride, stride, biased=False, relu=False,
                       name="res%s_branch1" % block)
                 .batch_normalization(name="bn%s_branch1" % block))
            shortcut = "bn%s_branch1" % block
        else:
            shortcut = input_name
        (self.feed(input_name)
             .conv(1, 1, depth, stride, stride, biased=False, relu=False,
                   name="res%s_branch2a" % block)
             .batch_normalization(relu=True, name="bn%s_branch2a" % block)
             .atrous_conv(3, 3, depth, dilation, biased=False, relu=False,
                          name="res%s_branch2b" % block)
             .batch_normalization(relu=True, name="bn%s_branch2b" % block)
             .conv(1, 1, 4 * depth, 1, 1, biased=False, relu=False,
                   name="res%s_branch2c" % block)
             .batch_normalization(name="bn%s_branch2c" % block))
        (self.feed(shortcut, "bn%s_branch2c" % block)
             .add(name="res%s" % block)
             .relu(name="res%s_relu" % block))
        return "res%s_relu" % block


def build_model(images, num_classes, is_training=False, config=None, **kwargs):
    """The DeepLab network on ``images`` (BGR, mean subtracted), and its logits.

    ``kwargs`` go to ``Network`` (``fold_batchnorm``, ``compute_dtype``, ...).

    Returns:
      (net, logits): the ``DeepLabResNetModel`` and its ``fc1_voc12`` output.
    """
    net = DeepLabResNetModel({"data": images}, num_classes, is_training=is_training,
                             config=config, **kwargs)
    return net, net.layers[CLASSIFIER_PREFIX]
