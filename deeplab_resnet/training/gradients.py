"""Conv2D's gradient for CPU training: dilated convolutions through their space-to-batch form.

TensorFlow's CPU kernels cannot back-propagate through dilated convolutions
("Current CPU implementations do not yet support dilation rates larger than
1"), so ``loss.tower_loss`` builds the network under a gradient override
that differentiates each dilated convolution through its space-to-batch form
(``tf.nn.atrous_conv2d``), the same function. The forward pass keeps the
faster native dilated kernel.
"""
from deeplab_resnet.runtime import tf

# Name of the Conv2D gradient that works for dilated convolutions on CPU.
CONV2D_GRADIENT = "DeepLabConv2DGrad"


@tf.RegisterGradient(CONV2D_GRADIENT)
def _conv2d_grad(op, grad):
    """Conv2D's gradient from an equivalent op TF can differentiate on CPU.

    Conv2D's gradient needs only the op's inputs, so the rebuilt forward op
    is never run; only its gradient ops are.
    """
    inputs, weights = op.inputs
    strides = op.get_attr("strides")
    dilations = op.get_attr("dilations")
    if op.get_attr("data_format") != b"NHWC":
        raise ValueError("Only NHWC convolutions are supported, got %s."
                         % op.get_attr("data_format"))
    padding = op.get_attr("padding").decode()
    if padding == "EXPLICIT":
        pads = op.get_attr("explicit_paddings")
        padding = [pads[i:i + 2] for i in range(0, 8, 2)]
    rate = dilations[1]
    if max(dilations) == 1 and isinstance(padding, list):
        # TF's CPU gradients of an EXPLICIT-padded Conv2D are Eigen's kernels;
        # padding first gets oneDNN's (VALID), and a ResNet-101 step at
        # 321x321 takes 8% less time. The pad's gradient is a slice.
        padded = tf.pad(inputs, padding) if any(sum(padding, [])) else inputs
        output = tf.nn.conv2d(padded, weights, strides, "VALID")
    elif max(dilations) == 1:
        output = tf.nn.conv2d(inputs, weights, strides, padding)
    elif dilations[2] == rate and max(strides) == 1 and padding != "SAME":
        padded = inputs if padding == "VALID" else tf.pad(inputs, padding)
        output = tf.nn.atrous_conv2d(padded, weights, rate, "VALID")
    else:
        raise ValueError("Cannot differentiate a Conv2D with strides %s, "
                         "dilations %s and padding %s." % (strides, dilations,
                                                           padding))
    return tf.gradients(output, [inputs, weights], grad_ys=grad)
