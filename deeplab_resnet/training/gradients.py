"""Conv2D's gradient for training: native where TF 2.21's kernels do it fast, rebuilt on CPU.

``loss.tower_loss`` builds the network under a gradient override map that
sends every Conv2D's gradient here. What TF 2.21 does with a Conv2D's
gradient (TF 2.21; which CPU case applies is probed at run time):

* GPU: cuDNN differentiates every configuration (explicit padding,
  dilations) natively and fast: the native gradient is returned, so GPU
  towers run exactly TensorFlow's own gradient.
* CPU, oneDNN on (TF's default on x86 CPUs with AVX512_VNNI/BF16/AMX;
  ``runtime`` turns it on for AVX2-only CPUs too): oneDNN takes
  Conv2DBackpropInput/Filter only for VALID and SAME padding. EXPLICIT
  padding (even all zeros, as every 1x1 of the network has) keeps Eigen's
  kernels, and Eigen errors on any
  dilation ("Current CPU implementations do not yet support dilation rates
  larger than 1"). oneDNN itself handles dilations, so the convolution is
  padded first and its VALID form differentiated natively, dilations kept.
* CPU without oneDNN, or bfloat16 on a CPU without AVX-512: Eigen's
  kernels, which cannot do dilations: dilated convolutions go through their
  space-to-batch form (``tf.nn.atrous_conv2d``, the same function). Eigen's
  bfloat16 backprops are ~10x slower than its float32 ones, so there
  bfloat16 gradients are computed in float32 and rounded once (what oneDNN's
  bf16 kernels do: bf16 operands, float32 accumulation).

Which CPU case applies is probed once per dtype (a tiny dilated VALID
backprop in a private graph), not guessed from TF internals. The gradient
is chosen per op from the device it was placed on at build time
(``op.device``): an op with no device counts as CPU unless TensorFlow sees a
GPU, where its placer would put a Conv2D. ``tests/test_bf16_training.py``
pins every case's gradient against the space-to-batch form.
"""
import functools

from deeplab_resnet.runtime import session_config, tf

CONV2D_GRADIENT = "DeepLabConv2DGrad"
# Dilated convolutions with fewer outputs go through space-to-batch on CPU
# even where oneDNN takes dilations: oneDNN's dilated backward-weights of
# narrow outputs is an im2col GEMM 5-8x slower.
NARROW_OUTPUTS = 128


def _device_type(op):
    """'CPU', 'GPU', ... for the op's requested device, or None if unplaced."""
    if not op.device:
        return None
    kind = tf.DeviceSpec.from_string(op.device).device_type
    return kind.upper() if kind else None


@functools.lru_cache(maxsize=None)
def _gpu_visible():
    return bool(tf.config.list_physical_devices("GPU"))


def runs_on_cpu(op):
    kind = _device_type(op)
    if kind is None:
        return not _gpu_visible()
    return kind == "CPU"


def _probe(dtype_name, fp32_compute):
    """Whether a dilated VALID Conv2D backprop runs natively on this CPU.

    With ``fp32_compute``, the question is asked for float32 (used for bf16
    gradients computed in float32).
    """
    dtype = tf.float32 if fp32_compute else tf.as_dtype(dtype_name)
    with tf.Graph().as_default(), tf.device("/cpu:0"):
        x = tf.zeros([1, 6, 6, 2], dtype)
        w = tf.zeros([3, 3, 2, 2], dtype)
        g = tf.zeros([1, 2, 2, 2], dtype)
        dx = tf.nn.conv2d_backprop_input([1, 6, 6, 2], w, g, [1, 1, 1, 1], "VALID",
                                         dilations=[1, 2, 2, 1])
        dw = tf.nn.conv2d_backprop_filter(x, [3, 3, 2, 2], g, [1, 1, 1, 1], "VALID",
                                          dilations=[1, 2, 2, 1])
        try:
            # One thread of its own: its pools are not the later sessions'.
            with tf.Session(config=session_config(1, 1)) as sess:
                sess.run([dx, dw])
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                tf.errors.NotFoundError):
            return False
    return True


@functools.lru_cache(maxsize=None)
def onednn_handles(dtype_name):
    """True if oneDNN runs Conv2D backprops of this dtype here (probe)."""
    return _probe(dtype_name, False)


@functools.lru_cache(maxsize=None)
def bf16_backprop_in_fp32():
    """bf16 backprops are better done in float32 here: oneDNN does not take
    bf16 (no AVX-512), so TF would run Eigen's slow bf16 kernels."""
    return not onednn_handles("bfloat16")


def _explicit_pads(op):
    pads = op.get_attr("explicit_paddings")
    return [list(pads[i:i + 2]) for i in range(0, 8, 2)]


def cpu_conv2d_grad(op, grad):
    """Gradients of a CPU Conv2D (NHWC) that TF 2.21's CPU kernels can run fast."""
    inputs, weights = op.inputs
    if op.get_attr("data_format") != b"NHWC":
        raise ValueError("Only NHWC convolutions are supported, got %s."
                         % op.get_attr("data_format"))
    strides = list(op.get_attr("strides"))
    dilations = list(op.get_attr("dilations"))
    padding = op.get_attr("padding").decode()
    dtype = inputs.dtype.base_dtype
    compute = dtype
    if dtype == tf.bfloat16 and bf16_backprop_in_fp32():
        compute = tf.float32
    k_h, k_w = weights.get_shape().as_list()[:2]
    if (k_h, k_w) == (1, 1) and max(strides) > 1 and max(dilations) == 1:
        # Strided 1x1 (res3a): TF's own kernels, kept in Eigen by the EXPLICIT
        # (zero) padding, ran 2-3x faster than oneDNN's strided backward
        # (an im2col GEMM on AVX2) and than subsampling first. Eigen's bf16
        # backprops are 20-50x slower than its float32 ones: float32 here.
        compute = tf.float32
        x, w, g = (tf.cast(t, compute) for t in (inputs, weights, grad))
        dx, dw = native_conv2d_grad(op, g, x, w)
        return tf.cast(dx, dtype), tf.cast(dw, dtype)
    padded = inputs
    pads = None
    if padding == "EXPLICIT":
        # EXPLICIT-padded backprops are Eigen's even with oneDNN on; pad, then
        # differentiate the VALID convolution, which oneDNN takes.
        pads = _explicit_pads(op)
        if any(sum(pads, [])):
            padded = tf.pad(inputs, pads)
        else:
            pads = None
        padding = "VALID"
    dilated = max(dilations) > 1
    if dilated and (not onednn_handles(compute.name)
                    or weights.get_shape().as_list()[3] < NARROW_OUTPUTS):
        # Eigen: no dilations; space-to-batch form of the same convolution.
        # oneDNN's dilated backward-weights of narrow outputs (ASPP's 21) is
        # an im2col GEMM 5-8x slower than the space-to-batch form.
        rate = dilations[1]
        if dilations[2] != rate or max(strides) > 1:
            raise ValueError("Cannot differentiate a Conv2D with strides %s, "
                             "dilations %s on this CPU." % (strides, dilations))
        x = tf.cast(padded, compute)
        w = tf.cast(weights, compute)
        output = tf.nn.atrous_conv2d(x, w, rate, padding)
        dx, dw = tf.gradients(output, [x, w], grad_ys=tf.cast(grad, compute))
    else:
        x, w, g = (tf.cast(t, compute) for t in (padded, weights, grad))
        dx = tf.nn.conv2d_backprop_input(tf.shape(padded), w, g, strides, padding,
                                         dilations=dilations)
        dw = tf.nn.conv2d_backprop_filter(x, tf.shape(weights), g, strides, padding,
                                          dilations=dilations)
    dx, dw = tf.cast(dx, dtype), tf.cast(dw, dtype)
    if pads is not None:
        # The Pad's gradient: the unpadded window.
        dx = tf.slice(dx, [p[0] for p in pads], tf.shape(inputs))
    return dx, dw


def native_conv2d_grad(op, grad, inputs=None, weights=None):
    """TensorFlow's own Conv2D gradient (nn_grad._Conv2DGrad), public ops only.

    ``inputs``/``weights`` replace the op's (e.g. cast to another dtype).
    """
    if inputs is None:
        inputs, weights = op.inputs
    padding = op.get_attr("padding").decode()
    if padding == "EXPLICIT":
        # In data_format order, as Conv2D stores it.
        padding = _explicit_pads(op)
    kwargs = dict(strides=op.get_attr("strides"), padding=padding,
                  use_cudnn_on_gpu=op.get_attr("use_cudnn_on_gpu"),
                  data_format=op.get_attr("data_format").decode(),
                  dilations=op.get_attr("dilations"))
    return [tf.nn.conv2d_backprop_input(tf.shape(inputs), weights, grad, **kwargs),
            tf.nn.conv2d_backprop_filter(inputs, tf.shape(weights), grad, **kwargs)]


def conv2d_grad(op, grad):
    """The registered gradient: native on GPU (and other devices), rebuilt on CPU."""
    if runs_on_cpu(op):
        return cpu_conv2d_grad(op, grad)
    return native_conv2d_grad(op, grad)


tf.RegisterGradient(CONV2D_GRADIENT)(conv2d_grad)
