"""A Caffe-style layer builder for tf.compat.v1 graphs.

Layers are methods chained on a network under construction, so a model reads
top to bottom like its prototxt::

    (self.feed('data')
         .conv(7, 7, 64, 2, 2, padding=3, biased=False, relu=False, name='conv1')
         .batch_normalization(relu=True, name='bn_conv1')
         .max_pool(3, 3, 2, 2, padding=1, name='pool1'))

Every layer keeps its Caffe name: its output is recorded in ``self.layers``,
its variables live under ``tf.variable_scope(name)``, and a description of it
is appended to ``self.layer_specs`` (enough to write the matching Caffe
prototxt, see ``deeplab_resnet.caffe.prototxt``). Weight conversion is therefore a name
lookup: the weight file maps ``'<layer>/<param>'`` to arrays.

Numerics follow Caffe, not TensorFlow's 'SAME' rule: convolutions and pooling
pad explicitly and symmetrically as the prototxt says, and max pooling rounds
its output size up the way Caffe does, so odd and even input sizes both give
Caffe's shapes and values (tests/test_network.py pins both).
"""
import logging

import numpy as np

from deeplab_resnet.layer_ops import (BN_EPSILON, caffe_pool_output_size,
                                      frozen_batch_norm,
                                      narrow_taps_by_default, summed_taps_conv2d,
                                      taps_conv2d)
from deeplab_resnet.messages import abbreviate
from deeplab_resnet.runtime import tf

log = logging.getLogger(__name__)

# Op types that hold variables (ref, resource and their handles).
VARIABLE_OPS = ("Variable", "VariableV2", "VarHandleOp")
# Caffe's BatchNorm moving_average_fraction default.
BN_MOMENTUM = 0.999
# bfloat16 convolutions with fewer outputs than this go through
# ``taps_conv2d``: oneDNN runs DeepLab's ASPP classifier (3x3, 2048 -> 21
# channels, dilation 6-24) in bf16 at a quarter of its GEMM speed, which
# made it a fifth of the whole bf16 network's time at 513x513. In float32
# its direct kernels run the four branches at a third of the matmul peak.
FEW_OUTPUTS = 32


def layer(op):
    """Turn ``op(self, input, ...)`` into a chainable, named, recorded layer."""

    def layer_decorated(self, *args, **kwargs):
        name = kwargs.setdefault("name", self.get_unique_name(op.__name__))
        if not self.terminals:
            raise RuntimeError("No input variables found for layer %s." % name)
        if len(self.terminals) == 1:
            layer_input = self.terminals[0]
        else:
            layer_input = list(self.terminals)
        input_names = list(self._terminal_names)
        layer_output = op(self, layer_input, *args, **kwargs)
        self.layers[name] = layer_output
        if self.layer_specs and self.layer_specs[-1]["name"] == name:
            self.layer_specs[-1]["inputs"] = input_names
        self.feed(name)
        return self

    layer_decorated.__name__ = op.__name__
    layer_decorated.__doc__ = op.__doc__
    return layer_decorated


class Network(object):
    """Base class: subclasses implement ``setup()`` with chained layer calls.

    Args:
      inputs: dict of name -> NHWC tensor, e.g. ``{'data': images}``; images are
        BGR with the ImageNet mean subtracted, as Caffe saw them.
      num_classes: output channels of the classifier.
      is_training: if True, batch normalisation uses batch statistics and
        updates its moving averages (ops in ``tf.GraphKeys.UPDATE_OPS``).
        DeepLab fine-tunes with frozen statistics, which is the default.
      trainable: whether variables join ``TRAINABLE_VARIABLES``.
      fold_batchnorm: build the inference form in which each BatchNorm (with
        Caffe's Scale) is folded into the preceding convolution: the
        convolution's weights are pre-scaled and the BN layer is a bias add.
        Weights must then be folded with ``fold_batchnorm_weights`` before
        ``assign_weights``; ``checkpoints.restore`` does this.
      compute_dtype: dtype of the activations (tf.float32 or tf.bfloat16).
      variable_dtype: dtype the weights are stored in, float32 by default so
        that training keeps full precision; they are cast to
        ``compute_dtype`` where used. Inference in bfloat16 stores them in
        bfloat16 instead, so that no run casts all of ResNet-101's weights.
      config: passed to ``setup`` as ``self.config``.
      narrow_taps: run stride-1 convolutions with fewer than ``FEW_OUTPUTS``
        outputs (the ASPP classifier) as ``taps_conv2d``, and a sum of such
        convolutions (``atrous_conv_sum``) as one ``summed_taps_conv2d``.
        None: in bfloat16, and in float32 where oneDNN runs it on a CPU
        (``narrow_taps_by_default``). CPU training sets it in float32
        whatever the kernels: its backward pass is 3-5x faster than the
        dilated convolution's (space-to-batch at rates 6-24 computes mostly
        padding).
    """

    def __init__(self, inputs, num_classes, is_training=False, trainable=True,
                 fold_batchnorm=False, compute_dtype=tf.float32, config=None,
                 variable_dtype=tf.float32, narrow_taps=None):
        self.inputs = inputs
        self.num_classes = num_classes
        self.is_training = is_training
        self.trainable = trainable
        self.fold_batchnorm = fold_batchnorm
        self.compute_dtype = tf.as_dtype(compute_dtype)
        self.variable_dtype = tf.as_dtype(variable_dtype)
        self.narrow_taps = (narrow_taps_by_default(self.compute_dtype)
                            if narrow_taps is None else bool(narrow_taps))
        self.config = config
        self.terminals = []
        self._terminal_names = []
        self.layers = dict(inputs)
        self.layer_specs = []
        self.variables = {}
        self.setup()

    def setup(self):
        raise NotImplementedError("Subclasses must implement setup().")

    # ------------------------------------------------------------------ graph
    def feed(self, *args):
        """Set the inputs of the next layer: layer names or tensors."""
        if not args:
            raise ValueError("feed() needs at least one layer name or tensor.")
        self.terminals = []
        self._terminal_names = []
        for fed_layer in args:
            if isinstance(fed_layer, str):
                try:
                    tensor = self.layers[fed_layer]
                except KeyError:
                    raise KeyError("Unknown layer name fed: %s" % fed_layer)
                self._terminal_names.append(fed_layer)
            else:
                tensor = fed_layer
                self._terminal_names.append(fed_layer.op.name)
            self.terminals.append(tensor)
        return self

    def get_unique_name(self, prefix):
        ident = sum(t.startswith(prefix) for t in self.layers) + 1
        return "%s_%d" % (prefix, ident)

    def make_var(self, name, shape, initializer, dtype=None):
        """Create a ``variable_dtype`` variable, returned in ``dtype``.

        ``dtype`` defaults to the compute dtype; BatchNorm asks for float32,
        which fused_batch_norm wants, so that float32 parameters are not
        rounded through bfloat16 on the way. Mixed-precision training keeps
        float32 variables: the cast's gradient brings their gradients back to
        float32.
        """
        var = tf.get_variable(name, shape, dtype=self.variable_dtype,
                              initializer=initializer, trainable=self.trainable)
        self.variables[var.op.name] = var
        dtype = tf.as_dtype(dtype or self.compute_dtype)
        if dtype != self.variable_dtype:
            return tf.cast(var, dtype)
        return var

    def _record(self, name, kind, **params):
        self.layer_specs.append(dict(name=name, type=kind, **params))

    # ----------------------------------------------------------------- layers
    @layer
    def conv(self, input, k_h, k_w, c_o, s_h, s_w, name, padding=None,
             dilation=1, relu=True, biased=True):
        """Convolution with Caffe's explicit symmetric zero padding.

        ``padding=None`` pads ``dilation * (k - 1) / 2``, which keeps the size
        of stride-1 layers as DeepLab's prototxt does.
        """
        if padding is None:
            padding = dilation * (k_h - 1) // 2
        c_i = int(input.get_shape()[-1])
        self._record(name, "Convolution", kernel=(k_h, k_w), stride=(s_h, s_w),
                     pad=padding, dilation=dilation, num_output=c_o,
                     bias=biased, relu=relu)
        with tf.variable_scope(name):
            weights = self._conv_weights(k_h, k_w, c_i, c_o)
            if (self.narrow_taps and c_o < FEW_OUTPUTS
                    and (s_h, s_w) == (1, 1) and (k_h, k_w) != (1, 1)):
                output = taps_conv2d(input, weights, padding, dilation)
            else:
                output = tf.nn.conv2d(
                    input, weights, strides=[1, s_h, s_w, 1],
                    padding=[[0, 0], [padding, padding], [padding, padding], [0, 0]],
                    dilations=[1, dilation, dilation, 1])
            if biased:
                output = tf.nn.bias_add(
                    output, self.make_var("biases", [c_o], tf.zeros_initializer()))
            if relu:
                output = tf.nn.relu(output, name=tf.get_variable_scope().name)
        return output

    def atrous_conv(self, k_h, k_w, c_o, dilation, name, relu=True, biased=True,
                    padding=None):
        """Dilated stride-1 convolution (Caffe's ``dilation``), padded to keep size."""
        return self.conv(k_h, k_w, c_o, 1, 1, name=name, padding=padding,
                         dilation=dilation, relu=relu, biased=biased)

    def atrous_conv_sum(self, k_h, k_w, c_o, dilations, names, name):
        """Biased dilated convolutions of the fed input, one per dilation,
        summed: ``atrous_conv(k_h, k_w, c_o, d, name=n, relu=False)`` for each
        ``d, n`` in ``dilations, names``, then ``feed(*names).add(name=name)``.

        Those are the layers recorded, and their variables, whatever runs:
        with narrow taps (see ``__init__``) and narrow outputs, the branches
        run as one ``summed_taps_conv2d`` and only the sum is in
        ``self.layers``.
        """
        input_names, input = list(self._terminal_names), self.terminals[0]
        if not (self.narrow_taps and c_o < FEW_OUTPUTS and (k_h, k_w) != (1, 1)):
            source = input_names[0] if input_names[0] in self.layers else input
            for dilation, branch in zip(dilations, names):
                self.feed(source).atrous_conv(k_h, k_w, c_o, dilation, relu=False,
                                                  name=branch)
            return self.feed(*names).add(name=name)
        c_i = int(input.get_shape()[-1])
        branches, biases = [], []
        for dilation, branch in zip(dilations, names):
            pad = dilation * (k_h - 1) // 2
            self._record(branch, "Convolution", kernel=(k_h, k_w), stride=(1, 1),
                         pad=pad, dilation=dilation, num_output=c_o, bias=True,
                         relu=False, inputs=input_names)
            with tf.variable_scope(branch):
                branches.append((self._conv_weights(k_h, k_w, c_i, c_o), pad, dilation))
                biases.append(self.make_var("biases", [c_o], tf.zeros_initializer()))
        self._record(name, "Eltwise", inputs=list(names))
        with tf.variable_scope(name):
            self.layers[name] = tf.nn.bias_add(summed_taps_conv2d(input, branches),
                                               tf.add_n(biases), name=name)
        return self.feed(name)

    def _conv_weights(self, k_h, k_w, c_i, c_o):
        return self.make_var(
            "weights", [k_h, k_w, c_i, c_o],
            tf.variance_scaling_initializer(2.0, "fan_in", "truncated_normal"))

    @layer
    def relu(self, input, name):
        self._record(name, "ReLU")
        return tf.nn.relu(input, name=name)

    @layer
    def max_pool(self, input, k_h, k_w, s_h, s_w, name, padding=0):
        """Max pooling with Caffe's ceil-mode output size.

        Caffe gives ``ceil((H + 2p - k) / s) + 1`` outputs, dropping the last
        if it would start past the image and the left pad. TF only floors, so
        the right side gets the extra padding that makes VALID pooling
        produce exactly Caffe's windows; padding is -inf so it never wins.
        """
        self._record(name, "Pooling", kernel=(k_h, k_w), stride=(s_h, s_w),
                     pad=padding)
        shape = tf.shape(input)
        pads = [[0, 0]]
        for size, k, s in ((shape[1], k_h, s_h), (shape[2], k_w, s_w)):
            out = caffe_pool_output_size(size, k, s, padding)
            # Negative when a dropped window leaves the last rows unused
            # (kernel < stride); VALID pooling then ignores them by itself.
            pads.append([padding, tf.maximum((out - 1) * s + k - size - padding, 0)])
        pads.append([0, 0])
        padded = tf.pad(input, pads, constant_values=-np.inf)
        return tf.nn.max_pool2d(padded, [k_h, k_w], [s_h, s_w], "VALID", name=name)

    @layer
    def add(self, inputs, name):
        self._record(name, "Eltwise")
        return tf.add_n(inputs, name=name)

    @layer
    def batch_normalization(self, input, name, relu=False):
        """Caffe's BatchNorm followed by its Scale layer, in one layer.

        Variables: ``mean`` and ``variance`` (Caffe's stored statistics, already
        divided by its scale-factor blob) and ``scale``/``offset`` (the Scale
        layer's gamma and beta).
        """
        self._record(name, "BatchNorm", relu=relu)
        c = int(input.get_shape()[-1])
        with tf.variable_scope(name):
            if self.fold_batchnorm:
                output = tf.nn.bias_add(
                    input, self.make_var("bias", [c], tf.zeros_initializer()))
            else:
                output = self._batch_norm(input, c)
            if relu:
                output = tf.nn.relu(output, name=tf.get_variable_scope().name)
        return output

    def _batch_norm(self, input, c):
        # fused_batch_norm wants float32 parameters whatever the input dtype.
        scale32 = self.make_var("scale", [c], tf.ones_initializer(), tf.float32)
        offset32 = self.make_var("offset", [c], tf.zeros_initializer(), tf.float32)
        # Statistics are never trained by gradient descent.
        mean_var = tf.get_variable("mean", [c], tf.float32, tf.zeros_initializer(),
                                   trainable=False)
        variance_var = tf.get_variable("variance", [c], tf.float32,
                                       tf.ones_initializer(), trainable=False)
        self.variables[mean_var.op.name] = mean_var
        self.variables[variance_var.op.name] = variance_var
        if not self.is_training:
            return frozen_batch_norm(input, scale32, offset32, mean_var, variance_var)
        output, batch_mean, batch_variance = tf.nn.fused_batch_norm(
            input, scale32, offset32, epsilon=BN_EPSILON, is_training=True)
        for var, value in ((mean_var, batch_mean), (variance_var, batch_variance)):
            update = tf.assign_sub(var, (1.0 - BN_MOMENTUM) * (var - value))
            tf.add_to_collection(tf.GraphKeys.UPDATE_OPS, update)
        return output

    # ---------------------------------------------------------------- weights
    def batchnorm_producers(self):
        """Map each BatchNorm layer to the convolution that feeds it."""
        return {spec["name"]: spec["inputs"][0] for spec in self.layer_specs
                if spec["type"] == "BatchNorm"}

    def assign_weights(self, weights, session, ignore_missing=False, skip=()):
        """Assign a ``{'layer/param': array}`` dict to this network's variables.

        Args:
          weights: mapping from variable name (no ``:0``) to numpy array.
          session: the session whose variables receive the values.
          ignore_missing: leave variables that have no entry as initialised
            (e.g. the classifier when starting from the ImageNet init model).
          skip: layer names whose variables are not assigned.

        Raises:
          ValueError: listing weights with no variable, variables with no
            weight (unless ``ignore_missing``), and shape mismatches.
        """
        wanted, given, missing = self.check_weights(weights, ignore_missing, skip)
        # One run feeding every initializer: Variable.load runs the session
        # once per variable, which took ~1 min for ResNet-101's 528.
        loads = [(var, given[key]) for key, var in wanted.items() if key in given]
        session.run([var.initializer for var, _ in loads],
                    {var.initializer.inputs[1]: np.asarray(value, dtype=np.float32)
                     for var, value in loads})
        if missing:
            log.info("Left %d variables at their initial values: %s",
                     len(missing), abbreviate(missing))

    def check_weights(self, weights, ignore_missing=False, skip=()):
        """Raise unless ``weights`` fit this network (see ``assign_weights``).

        Returns:
          (variables to assign, weights to assign, names of variables left
          without weights), skipped layers left out.
        """
        skipped = lambda key: key.split("/")[0] in skip
        wanted = {k: v for k, v in self.variables.items() if not skipped(k)}
        given = {k: v for k, v in weights.items() if not skipped(k)}
        problems, missing = shape_problems(
            {k: v.shape for k, v in given.items()},
            {k: v.get_shape().as_list() for k, v in wanted.items()},
            missing=None if ignore_missing else "variables with no weights: %s")
        if problems:
            raise ValueError(
                "The weights do not match the network (%s). Check --num-classes "
                "and the model configuration, or that the file was written by "
                "convert.py / train.py for this network." % "; ".join(problems))
        return wanted, given, missing


def fold_batchnorm_weights(weights, producers):
    """Fold BatchNorm + Scale into the preceding convolutions.

    ``y = (conv(x, W) - mean) / sqrt(var + eps) * scale + offset`` equals
    ``conv(x, W * a) + (offset - mean * a)`` with ``a = scale / sqrt(var + eps)``
    per output channel, so inference skips a pass over every activation.

    Args:
      weights: unfolded ``{'layer/param': array}``.
      producers: ``{bn_layer: conv_layer}`` from ``Network.batchnorm_producers``.
    Returns:
      A new dict with ``conv/weights`` scaled and ``bn/bias`` in place of the
      four BN entries.
    """
    folded = dict(weights)
    for bn, conv in producers.items():
        keys = ["%s/%s" % (bn, p) for p in ("scale", "offset", "mean", "variance")]
        if not all(k in weights for k in keys):
            continue
        scale, offset, mean, variance = (np.asarray(weights[k], np.float64)
                                         for k in keys)
        factor = scale / np.sqrt(variance + BN_EPSILON)
        conv_key = conv + "/weights"
        folded[conv_key] = (np.asarray(weights[conv_key], np.float64)
                            * factor).astype(np.float32)
        # A biased convolution's bias passes through the normalisation too.
        conv_bias = np.asarray(folded.pop(conv + "/biases", 0.0), np.float64)
        folded[bn + "/bias"] = (offset + (conv_bias - mean) * factor).astype(np.float32)
        for k in keys:
            del folded[k]
    return folded


def compare_shapes(given, expected):
    """How weights fall short of a network, by name and shape.

    Args:
      given: ``{name: shape}`` of the weights at hand.
      expected: ``{name: shape}`` of the network's variables.
    Returns:
      sorted lists ``(unexpected, missing, mismatched)``: names only in
      ``given``, names only in ``expected``, and ``'name: file S, network S'``
      for names in both whose shapes differ.
    """
    given = {k: tuple(v) for k, v in given.items()}
    expected = {k: tuple(v) for k, v in expected.items()}
    unexpected = sorted(set(given) - set(expected))
    missing = sorted(set(expected) - set(given))
    mismatched = sorted("%s: file %s, network %s" % (k, given[k], expected[k])
                        for k in set(given) & set(expected)
                        if given[k] != expected[k])
    return unexpected, missing, mismatched


def shape_problems(given, expected, unexpected="weights with no matching variable: %s",
                   missing="variables with no weights: %s"):
    """``compare_shapes``'s findings as parts of a message, one per kind.

    Args:
      given, expected: as ``compare_shapes``.
      unexpected, missing: '%s' formats for those names; None leaves the kind
        out of the message.
    Returns:
      (message parts, the missing names).
    """
    unexpected_names, missing_names, mismatched = compare_shapes(given, expected)
    found = ((unexpected, unexpected_names), (missing, missing_names),
             ("shape mismatches: %s", mismatched))
    return ([text % abbreviate(names) for text, names in found if text and names],
            missing_names)
