"""TensorFlow ops behind the layer builder: Caffe's numerics, cheaper gradients.

``network.Network`` chains and records layers; the ops here compute them
where TensorFlow's own op differs from Caffe or is slow: BatchNorm with frozen
statistics (a one-multiply gradient), narrow convolutions as one wide GEMM and
shifted sums (``taps_conv2d``; ``summed_taps_conv2d`` for a sum of several),
Caffe's ceil-mode pooled and Interp sizes, and where narrow taps are the
default. They need no network and are tested on their own
(tests/test_network.py, tests/test_speed_paths.py).
"""
from deeplab_resnet import kernels
from deeplab_resnet.runtime import tf

# Caffe's BatchNorm default; DeepLab's prototxts do not override it.
BN_EPSILON = 1e-5


def frozen_batch_norm(input, scale, offset, mean, variance):
    """BatchNorm with stored statistics, with a gradient that costs one multiply.

    The forward pass is TensorFlow's fused batch norm (``is_training=False``).
    With the statistics fixed, the layer is ``x * a + b`` per channel, ``a =
    scale / sqrt(variance + eps)``, so the input's gradient is ``dy * a``;
    TensorFlow's own gradient (FusedBatchNormGradV3) computes it together
    with the scale and offset gradients, reducing over the whole activation
    whether or not they are used: 2.6x the multiply's time on a CPU with
    Eigen, 4x with oneDNN (measured at 10x81x81x256). Here each is its own op and runs only if asked for:
    DeepLab freezes BatchNorm, so training computes ``dy * a`` alone. In
    bfloat16 the multiply is in bfloat16 (the factor rounded to it), where
    TensorFlow's rounds once from float32: a relative difference of at most
    one bfloat16 step in the input's gradient.

    Args:
      input: NHWC activations, float32 or bfloat16.
      scale, offset, mean, variance: float32 [C] (variables or tensors); no
        gradient flows to the statistics.
    """
    mean, variance = tf.convert_to_tensor(mean), tf.convert_to_tensor(variance)

    @tf.custom_gradient
    def batch_norm(x, gamma, beta):
        output, _, _ = tf.nn.fused_batch_norm(x, gamma, beta, mean, variance,
                                              epsilon=BN_EPSILON, is_training=False)

        def grad(dy):
            inv_std = tf.math.rsqrt(variance + BN_EPSILON)
            dx = dy * tf.cast(gamma * inv_std, dy.dtype)
            dy32 = tf.cast(dy, tf.float32)
            normalised = (tf.cast(x, tf.float32) - mean) * inv_std
            return (dx, tf.reduce_sum(dy32 * normalised, axis=[0, 1, 2]),
                    tf.reduce_sum(dy32, axis=[0, 1, 2]))
        return output, grad
    return batch_norm(input, tf.convert_to_tensor(scale), tf.convert_to_tensor(offset))


def taps_conv2d(input, weights, pad, dilation):
    """A stride-1 convolution as one 1x1 convolution and shifted sums.

    The 1x1 convolution multiplies every pixel by all ``k_h * k_w`` taps at
    once, a GEMM with ``k_h * k_w * c_o`` outputs that runs at full speed
    where ``c_o`` alone is too narrow; each tap's product map is then shifted
    by its offset and the maps are summed. The sums are those of
    ``tf.nn.conv2d`` with explicit padding ``pad`` and ``dilations``; they
    are added in float32 and rounded once, as a convolution accumulates.

    Args:
      input: [N, H, W, c_i]; weights: [k_h, k_w, c_i, c_o], same dtype.
      pad: zero padding on each side; dilation: tap spacing.
    Returns:
      [N, H + 2 pad - dilation (k_h - 1), W + 2 pad - dilation (k_w - 1), c_o],
      in the input's dtype.
    """
    return summed_taps_conv2d(input, [(weights, pad, dilation)])


def summed_taps_conv2d(input, branches):
    """The sum of stride-1 convolutions of one input, as one taps GEMM.

    ``taps_conv2d`` for several convolutions at once: the taps of every
    branch share one 1x1 convolution (DeepLab's four ASPP branches: 2048 ->
    4 x 9 x 21 outputs, a GEMM as wide as the body's, where each branch's
    own 189 outputs ran at two thirds of its speed), and all the shifted
    product maps go into one float32 sum, rounded once.

    Args:
      input: [N, H, W, c_i].
      branches: ``(weights, pad, dilation)`` per convolution, weights
        [k_h, k_w, c_i, c_o] in the input's dtype; every branch must give
        the same output size.
    Returns:
      [N, h, w, c_o], the sum of the branches' ``tf.nn.conv2d`` outputs.
    Raises:
      ValueError: if the branches' output sizes or widths differ.
    """
    shapes = [w.get_shape().as_list() for w, _, _ in branches]
    c_o = shapes[0][3]
    growth = {(2 * p - d * (k_h - 1), 2 * p - d * (k_w - 1), width)
              for (k_h, k_w, _, width), (_, p, d) in zip(shapes, branches)}
    if len(growth) != 1:
        raise ValueError("summed_taps_conv2d needs branches of one output size and "
                         "width; got pads, dilations and shapes %r."
                         % [(p, d, s) for (_, p, d), s in zip(branches, shapes)])
    frame = max(p for _, p, _ in branches)
    origins = [(frame - p + i * d, frame - p + j * d)
               for (k_h, k_w, _, _), (_, p, d) in zip(shapes, branches)
               for i in range(k_h) for j in range(k_w)]
    taps = tf.concat([tf.reshape(tf.transpose(w, [2, 0, 1, 3]), [1, 1, k[2], -1])
                      for (w, _, _), k in zip(branches, shapes)], axis=3)
    products = tf.nn.conv2d(input, taps, [1, 1, 1, 1], "VALID")
    output = _shifted_sum(products, origins, c_o, frame, growth.pop()[:2])
    # Slicing with computed bounds loses the static shape.
    output.set_shape([input.get_shape()[0], None, None, c_o])
    return output


def _shifted_sum(products, origins, c_o, frame, growth):
    """``sum_t pad(products, frame)[:, y_t:y_t + h, x_t:x_t + w, tap t]`` in
    float32, with ``(y_t, x_t) = origins[t]`` and ``(h, w)`` the products'
    size plus ``growth``.

    It has its own gradient: each tap's product map receives the output
    gradient shifted back, so back-propagation is one pad, the slices and a
    concat of ``c_o``-channel maps, then the 1x1 convolution's two backprops
    (GEMMs as wide as the forward one). Autodiff of the slices would build
    one full-size map of all the taps' channels per tap.
    """
    rows, cols = zip(*origins)
    # The output gradient padded so that every tap's window fits in it.
    pads = [[0, 0], [max(0, max(rows) - frame), max(0, frame - min(rows) - growth[0])],
            [max(0, max(cols) - frame), max(0, frame - min(cols) - growth[1])], [0, 0]]

    @tf.custom_gradient
    def shifted_sum(products):
        padded = tf.pad(tf.cast(products, tf.float32),
                        [[0, 0], [frame, frame], [frame, frame], [0, 0]])
        shape = tf.shape(products)
        height, width = shape[1] + growth[0], shape[2] + growth[1]
        shifted = [padded[:, y:y + height, x:x + width, t * c_o:(t + 1) * c_o]
                   for t, (y, x) in enumerate(origins)]
        output = tf.cast(tf.add_n(shifted), products.dtype)

        def grad(dy):
            # products[y, x, tap t] fed output[y + frame - y_t, x + frame - x_t].
            in_shape = tf.shape(products)
            dy_pad = tf.pad(dy, pads)
            windows = [tf.slice(dy_pad, [0, frame - y + pads[1][0], frame - x + pads[2][0], 0],
                                [-1, in_shape[1], in_shape[2], -1])
                       for y, x in origins]
            return tf.concat(windows, axis=3)

        return output, grad

    return shifted_sum(products)


def caffe_pool_output_size(size, kernel, stride, pad):
    """Caffe's pooled size: ceil rounding, minus a window starting in the pad.

    Works on Python ints and on scalar int tensors alike.
    """
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if isinstance(out, int):
        return out - 1 if pad and (out - 1) * stride >= size + pad else out
    if pad:
        out = tf.where((out - 1) * stride >= size + pad, out - 1, out)
    return out


def narrow_taps_by_default(compute_dtype):
    """Whether ``Network`` runs narrow convolutions as taps unless told.

    In bfloat16, always. In float32 where oneDNN runs the graph on a CPU:
    its direct kernels ran DeepLab's ASPP head (four 2048 -> 21 branches at
    65x65) at a third of the fp32 matmul peak, the taps at four fifths. A
    GPU keeps cuDNN's convolutions, and Eigen (AVX2 CPUs' inference) its own.
    """
    if tf.as_dtype(compute_dtype) == tf.bfloat16:
        return True
    return (kernels.describe(kernels.current()) == kernels.ONEDNN
            and not tf.config.list_physical_devices("GPU"))


def interp_size(size, scale):
    """Caffe ``Interp`` size of a resize by ``scale``: (size - 1) * scale + 1.

    DeepLab's prototxts shrink inputs with ``Interp`` (``shrink_factor``), which
    keeps the corner pixels aligned: 321 gives 241 at 0.75 and 161 at 0.5.
    Fractions are floored.

    Args:
      size: int32 tensor [2], (height, width).
    Returns:
      int32 tensor [2], at least 1 each.
    """
    if scale == 1.0:
        return size
    scaled = tf.floor(tf.cast(size - 1, tf.float32) * scale)
    return tf.maximum(tf.cast(scaled, tf.int32) + 1, 1)
