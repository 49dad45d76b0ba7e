"""The dense CRF's mean field as a TensorFlow graph, and a session that runs it per image.

The model and inference of Kraehenbuehl & Koltun's code as pydensecrf wraps
it (``permutohedral`` explains the lattice filter and how closely it follows
the reference): ``Q = softmax(-unary)``, then ``iterations`` times ``Q =
softmax(-unary + sum_k w_k * K_sym_k(Q))``, everything in float32, with a
Gaussian kernel over position and a bilateral one over position and colour.

The two kernels, their lattice builds and their filters, run side by side
on the session's inter-op threads; each op runs on one thread (the sparse
products are single-threaded anyway, and a second intra-op thread only
added CPU). The unpruned CRF also splits the bilateral kernel's 21 class
channels into groups that run side by side: ~15-25% more CPU (each group
pays the per-entry overhead) for a quarter less time on idle cores. The
pruned CRF, the default, filters a few channels, too few to pay for that.
Measured on the VOC sample photo (375x500, 3 classes kept; Zen 5 EPYC, 2
cores): one intra-op thread, no groups, 0.37 s and 0.53 CPU-seconds; two
intra-op threads and two groups, 0.35 s and 0.62 CPU-seconds. Beside the
network in evaluate.py every CPU-second counts: there the former made the
TensorFlow CRF faster end to end than pydensecrf on two worker processes,
and the latter slower.

It runs in a graph and session of its own, and takes TensorFlow from
``runtime`` like every graph builder.
"""
import numpy as np

from deeplab_resnet.crf import pruning
from deeplab_resnet.crf.params import PROB_EPSILON, check_inputs
from deeplab_resnet.crf.permutohedral import (PermutohedralLattice, LatticeOperators,
                                              symmetric_norm)
from deeplab_resnet.machine import available_cores
from deeplab_resnet import runtime
from deeplab_resnet.runtime import tf


def _divide(x, divisor):
    """x / divisor in float32, exactly as IEEE division.

    Grappler rewrites a division by a constant into a multiplication by its
    reciprocal, which is not the same float (1 / 67 is inexact): for a few
    pixels that moves the feature across a simplex boundary, and their
    messages then differ from the reference's by ~1e-3. DivNoNan is left
    alone and divides (the divisor is positive here).
    """
    return tf.math.divide_no_nan(x, tf.constant(np.float32(divisor)))


def pixel_features(height, width, xy_std, image=None, rgb_std=None):
    """Kernel features in pydensecrf's DenseCRF2D order, pixels in row-major order.

    Args:
      height, width: int32 scalars.
      xy_std: position standard deviation in pixels (float > 0).
      image: optional [H, W, 3] RGB tensor (uint8 or float, 0..255) for the
        bilateral kernel, with rgb_std (> 0) its colour standard deviation.
    Returns:
      float32 [H * W, 2] (x / xy_std, y / xy_std), or [H * W, 5] with
      (r, g, b) / rgb_std appended; divided in float32 like the reference
      (standard deviations rounded to float32 first, as pydensecrf's C++
      takes them).
    """
    for name, value in (("xy_std", xy_std), ("rgb_std", rgb_std)):
        if value is not None and not np.float32(value) > 0:
            raise ValueError("The CRF's %s must be positive, got %r." % (name, value))
    ys, xs = tf.meshgrid(tf.range(height), tf.range(width), indexing="ij")
    columns = [_divide(tf.reshape(tf.cast(xs, tf.float32), [-1]), xy_std),
               _divide(tf.reshape(tf.cast(ys, tf.float32), [-1]), xy_std)]
    features = tf.stack(columns, 1)
    if image is not None:
        colour = _divide(tf.reshape(tf.cast(image, tf.float32), [-1, 3]), rgb_std)
        features = tf.concat([features, colour], 1)
    return features


def _split_channels(values, groups):
    """Split [N, C] into ``groups`` column blocks (static or dynamic C)."""
    if groups <= 1:
        return [values]
    c = tf.compat.dimension_value(values.shape[1])
    if c is not None:
        groups = min(groups, c)
        sizes = [c // groups + (1 if g < c % groups else 0) for g in range(groups)]
        return tf.split(values, sizes, axis=1) if groups > 1 else [values]
    c = tf.shape(values)[1]
    sizes = tf.stack([c // groups + tf.cast(g < c % groups, tf.int32) for g in range(groups)])
    return tf.split(values, sizes, axis=1, num=groups)


def _message_function(features, weight, groups):
    """``q -> weight * K_sym(q)`` for one Potts kernel, channels in groups."""
    operators = LatticeOperators(PermutohedralLattice(features))
    norm = symmetric_norm(operators)
    apply = operators.filter(splat_scale=norm, slice_scale=norm * np.float32(weight))

    def message(q):
        parts = [apply(part) for part in _split_channels(q, groups)]
        return parts[0] if len(parts) == 1 else tf.concat(parts, 1)
    return message


def kept_classes_graph(flat_probs, threshold):
    """``pruning.kept_classes`` as graph ops: int32 [K] ascending, K >= 2.

    Args:
      flat_probs: float32 [N, C] (C may be dynamic, >= 2).
      threshold: a Python float > 0.
    """
    peak = tf.reduce_max(flat_probs, axis=0)
    kept = tf.cast(tf.where(peak >= threshold)[:, 0], tf.int32)
    # top_k puts the lower index first on a tie, as the numpy rule does.
    top = tf.sort(tf.math.top_k(peak, pruning.MIN_KEPT).indices)
    return tf.cond(tf.size(kept) >= pruning.MIN_KEPT, lambda: kept, lambda: top)


def _pruned_logits(flat, threshold):
    """(kept, neg_unary [N, K], other [N, 1]): the kept classes, their
    log-probabilities, and the log of the folded channel (``pruning.folded_probs``),
    -inf when no class is pruned. Nothing of [N, C] is made but the input."""
    classes = tf.shape(flat)[1]
    kept = kept_classes_graph(flat, threshold)
    is_pruned = tf.cast(tf.reduce_all(tf.not_equal(tf.range(classes)[:, None], kept[None]), 1),
                        tf.float32)
    # A product with the pruned classes' indicator sums them without an
    # [N, C] temporary; each counts at least PROB_EPSILON, as clipped.
    other = tf.maximum(tf.matmul(flat, is_pruned[:, None]),
                       PROB_EPSILON * tf.reduce_sum(is_pruned))
    kept_probs = tf.clip_by_value(tf.gather(flat, kept, axis=1), PROB_EPSILON, 1.0)
    return kept, tf.log(kept_probs), tf.log(other)


def _restore_classes(q, kept, classes):
    """[N, K] marginals of the kept classes -> [N, classes], pruned at zero."""
    padded = tf.concat([q, tf.zeros_like(q[:, :1])], 1)
    where = tf.tensor_scatter_nd_update(tf.fill([classes], tf.size(kept)), kept[:, None],
                                        tf.range(tf.size(kept)))
    return tf.gather(padded, where, axis=1)


def _messages(image, height, width, params, channel_groups):
    """The message functions ``q -> w_k K_sym_k(q)`` of the kernels with a
    non-zero weight (a zero weight would multiply its message by 0)."""
    messages = []
    if params.pos_w != 0:
        with tf.name_scope("gaussian"):
            messages.append(_message_function(
                pixel_features(height, width, params.pos_xy_std), params.pos_w, 1))
    if params.bi_w != 0:
        with tf.name_scope("bilateral"):
            messages.append(_message_function(
                pixel_features(height, width, params.bi_xy_std, image, params.bi_rgb_std),
                params.bi_w, channel_groups))
    return messages


def default_channel_groups(params):
    """Groups of the bilateral kernel's class channels (see the module doc):
    up to two, one per core, for the unpruned CRF; one for the pruned."""
    if params.prune_threshold > 0:
        return 1
    return max(1, min(2, available_cores()))


def dense_crf_graph(image, probs, params, channel_groups=None):
    """Mean-field inference of the dense CRF, as graph ops on one image.

    With ``params.prune_threshold`` > 0 the classes are pruned in the graph
    (``pruning``: the rule, the folded channel), so the class count of the
    mean-field loop is dynamic; 0 builds the unpruned graph.

    Args:
      image: [H, W, 3] RGB tensor, uint8 (as pydensecrf takes it) or float
        in 0..255.
      probs: float32 [H, W, C] softmax probabilities at the image's size.
      params: object with CrfConfig's attributes (iterations, pos_w,
        pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, prune_threshold); read
        while building the graph.
      channel_groups: the bilateral kernel filters the classes in this many
        groups that run in parallel (its sparse products are single-threaded);
        1 for a single chain; default ``default_channel_groups``. It does not
        change the result.
    Returns:
      float32 [H, W, C] marginals (argmax them for labels).
    """
    return crf_outputs(image, probs, params, channel_groups)[0]


def crf_outputs(image, probs, params, channel_groups=None):
    """(marginals, labels) of one mean field: ``dense_crf_graph``'s marginals,
    and int32 [H, W] labels, their argmax, taken over the kept classes
    before the pruned ones are put back (the lower class on a tie, as the
    argmax of the marginals), so that a caller who wants labels only never
    makes the [H, W, C] marginals."""
    channel_groups = channel_groups or default_channel_groups(params)
    with tf.name_scope("dense_crf"):
        probs = tf.convert_to_tensor(probs, tf.float32)
        shape = tf.shape(probs)
        height, width, classes = shape[0], shape[1], shape[2]
        flat = tf.reshape(probs, [-1, classes])
        flat.set_shape([None, tf.compat.dimension_value(probs.shape[2])])
        if params.prune_threshold > 0:
            kept, neg_unary, other = _pruned_logits(flat, params.prune_threshold)
        else:
            kept, other = None, None
            neg_unary = tf.log(tf.clip_by_value(flat, PROB_EPSILON, 1.0))

        def normalise(logits):
            """Softmax, the folded channel (if any) in the sum. By hand: on a
            few columns it is cheaper than the softmax op of a concat."""
            if other is None:
                return tf.nn.softmax(logits)
            top = tf.maximum(tf.reduce_max(logits, 1, keepdims=True), other)
            exp = tf.exp(logits - top)
            return exp / (tf.reduce_sum(exp, 1, keepdims=True) + tf.exp(other - top))
        q = normalise(neg_unary)
        messages = (_messages(image, height, width, params, channel_groups)
                    if params.iterations > 0 else [])
        if messages:
            # A while loop, not ten unrolled copies: the graph stays small,
            # so Grappler's first pass over it takes a fraction of a second
            # instead of seconds; the ops of one iteration still run side by
            # side.
            def step(i, q):
                return i + 1, normalise(tf.add_n([neg_unary] + [m(q) for m in messages]))
            _, q = tf.while_loop(lambda i, q: i < params.iterations, step,
                                 [tf.constant(0), q], parallel_iterations=1,
                                 name="mean_field")
        labels = tf.argmax(q, 1, output_type=tf.int32)
        if kept is not None:
            labels = tf.gather(kept, labels)
            q = _restore_classes(q, kept, classes)
        return tf.reshape(q, shape), tf.reshape(labels, shape[:2])


def crf_session_config(threads=None):
    """``runtime.session_config`` as the CRF graph wants it.

    One inter-op thread per core (or ``threads``) and one intra-op thread:
    the parallelism comes from running ops side by side (see the module
    doc). Grappler is switched off: it finds nothing to speed up in this
    graph (measured: same time per image) but its first pass took ~1.5 s.
    """
    threads = threads or available_cores()
    config = runtime.session_config(1, threads)
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config


class TensorFlowCrf(object):
    """The dense CRF of a stream of images: one graph and session for all sizes.

    The graph takes placeholders of dynamic height and width and builds each
    image's lattices inside it, so nothing is rebuilt per image. It lives in
    a tf.Graph of its own and works whether or not the caller's process runs
    TensorFlow eagerly. One graph per class count (placeholders need a
    static C for the channel split); ``num_classes`` builds it up front.

    Args:
      params: object with iterations, pos_w, pos_xy_std, bi_w, bi_xy_std,
        bi_rgb_std, prune_threshold (the project's CrfConfig).
      num_classes: optional class count to build the graph for now.
      session_config: tf.ConfigProto; default ``crf_session_config()``.
      channel_groups: see ``dense_crf_graph``.
    """

    def __init__(self, params, num_classes=None, session_config=None,
                 channel_groups=None):
        self.params = params
        self._config = session_config or crf_session_config()
        self._groups = channel_groups or default_channel_groups(params)
        self._graphs = {}
        if num_classes:
            self._graph_for(num_classes)

    def _graph_for(self, classes):
        if classes not in self._graphs:
            graph = tf.Graph()
            with graph.as_default():
                image = tf.placeholder(tf.uint8, [None, None, 3], name="image")
                probs = tf.placeholder(tf.float32, [None, None, classes], name="probs")
                outputs = crf_outputs(image, probs, self.params, self._groups)
            graph.finalize()
            session = tf.Session(graph=graph, config=self._config)
            self._graphs[classes] = (session, image, probs, outputs)
        return self._graphs[classes]

    def marginals(self, image, probs):
        """Marginals of one image.

        Args:
          image: uint8 RGB array [H, W, 3].
          probs: float array [H, W, C], softmax output at the image's size.
        Returns:
          float32 array [H, W, C].
        Raises:
          ValueError: image and probabilities of different sizes, or an
            image that is not RGB.
        """
        return self._run(image, probs, 0)

    def labels(self, image, probs):
        """int32 [H, W] labels of one image, the argmax of ``marginals``
        without making them. Arguments and errors as ``marginals``."""
        return self._run(image, probs, 1)

    def _run(self, image, probs, output):
        image, probs = check_inputs(image, probs)
        probs = probs.astype(np.float32, copy=False)
        session, image_ph, probs_ph, outputs = self._graph_for(probs.shape[2])
        return session.run(outputs[output], {image_ph: image.astype(np.uint8, copy=False),
                                             probs_ph: probs})

    def close(self):
        for session, _, _, _ in self._graphs.values():
            session.close()
        self._graphs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
