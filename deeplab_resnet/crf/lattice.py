"""Dense CRF in TensorFlow graph ops: the permutohedral-lattice mean field of pydensecrf.

The fully connected CRF of Kraehenbuehl & Koltun (NIPS 2011, "Efficient
Inference in Fully Connected CRFs with Gaussian Edge Potentials") with the
model and inference of their code as pydensecrf wraps it and as
``deeplab_resnet.crf.dense_crf`` calls it:

* unary ``-log(clip(probs, 1e-8, 1))``;
* a Gaussian kernel over position, features ``(x, y) / pos_xy_std``, and a
  bilateral kernel over position and colour, features
  ``(x / bi_xy_std, y / bi_xy_std, r / bi_rgb_std, g / ..., b / ...)``, both
  with Potts compatibility: pydensecrf's ``compat=w`` makes the message of a
  kernel ``-w * K(Q)`` and the update ``Q = softmax(-unary - message)``, so a
  positive ``w`` adds ``+w * K(Q)`` to the logits of the labels the
  neighbours hold;
* ``K`` is the permutohedral-lattice filter of Adams, Baek & Davis
  (Eurographics 2010) as Kraehenbuehl's code implements it: features are
  elevated onto the hyperplane of the A*_d lattice, scaled so that the
  lattice blur approximates a Gaussian of standard deviation 1 in feature
  space; each pixel splats into the d + 1 vertices of its enclosing simplex
  with barycentric weights; the lattice values are blurred with [1 2 1] / 2
  along each of the d + 1 lattice directions in turn (0 .. d), a missing
  neighbour counting as zero; each pixel slices them back with the same
  weights, times ``alpha = 1 / (1 + 2^-d)``. The pixel's own contribution is
  *not* removed (the paper's sum is over j != i, the code's is not);
* symmetric normalisation, pydensecrf's default (``NORMALIZE_SYMMETRIC``):
  ``norm = 1 / sqrt(K(1) + 1e-20)`` once per image, ``K_sym(Q) = norm * K(norm
  * Q)``;
* ``Q = softmax(-unary)``, then ``iterations`` times ``Q = softmax(-unary +
  sum_k w_k * K_sym_k(Q))``, everything in float32.

The arithmetic follows the reference's: the same float32 elevation, the
same rounding to the remainder-0 point (ties downward), the same ranking
with its tie-breaking, the same barycentric weights. Lattice points are
the same set with the same neighbours, so the filter is the same linear map;
what differs is the order of the floating point sums, and so the marginals
agree to float32 rounding (~1e-6 after ten iterations on a VOC photo). One
trap on the way: Grappler rewrites ``x / constant`` into ``x * (1 /
constant)``, a different float; the features are divided with DivNoNan,
which it leaves alone (see ``_divide``).

How it is computed, and where that departs from the reference's loops:

* The lattice structure depends only on the image and the kernel. It is
  built once per image, inside the graph, from tensors of dynamic shape (one
  graph serves every image size), and reused by every iteration:
  vertex keys are packed into int64 (mixed radix over the lattice
  coordinates, with a margin so that a neighbour's key is the point's key
  plus a constant), hashed with ``tf.unique`` per remainder class (keys of
  different remainders never coincide; small tables are faster), and each
  class's points are sorted by key. Sorted points are lexicographic in the
  lattice coordinates, so lattice neighbours sit close together in memory;
  the reference numbers points in order of first appearance, which puts a
  point and its neighbour ~50k rows apart on a VOC image and made the blur
  twice as slow here. Neighbours are found by ``tf.searchsorted`` in the
  sorted keys (only the "n1" neighbour; "n2" is its inverse map).
* Splat, blur and slice are sparse matrices (``SparseTensorDenseMatMul``,
  int32 indices), so an iteration is a few sparse-dense products and no
  N x N matrix ever exists. The symmetric normalisation, the kernel weight,
  alpha and the blur's factors 1/2 are folded into the splat and slice
  weights (the blur uses the exact [1 2 1] and the 2^-(d+1) goes into the
  slice: powers of two, exact). One blur matrix per direction, each row's
  entries (self, n1, n2) together; merging two directions into their
  product has as many entries and measured no faster, and costlier to build.
* The class channels of the bilateral kernel are split into groups that the
  session runs side by side (the sparse product is single-threaded), and the
  two kernels run side by side too. This costs ~15% more CPU (each group
  pays the per-entry overhead) for up to twice the throughput on idle cores.

Speed, honestly: each sparse entry costs TensorFlow's CPU kernel ~5 ns plus
~0.7 ns per class, so an iteration on a 500x334 VOC photo (~7M entries of
21 classes) takes about as much CPU as pydensecrf's hand-written loops, and
the per-image lattice build about as much as its hash table. The gain over
pydensecrf on a CPU therefore comes only from the second core; on a GPU the
same graph runs unchanged.

It runs in a graph and session of its own, so it works whether or not the
caller's process runs TensorFlow eagerly.
"""
import numpy as np
import tensorflow.compat.v1 as tf

from deeplab_resnet.machine import available_cores
from deeplab_resnet.crf import PROB_EPSILON, check_inputs
# The reference's guard in 1 / sqrt(K(1) + eps), computed in double there.
NORM_EPSILON = 1e-20
# Packed lattice keys must stay below this (int64, with room for the class).
_MAX_KEY_BITS = 60


def _scale_factors(d):
    """Diagonal of the elevation matrix E times the lattice's inverse std.

    As the reference computes them: ``inv_std = sqrt(2/3) * (d + 1)`` stored
    in float32, ``1 / sqrt((i + 2)(i + 1))`` in double, their product stored
    in float32 (Adams et al., p. 5-6).
    """
    inv_std = np.float64(np.float32(np.sqrt(2.0 / 3.0) * (d + 1)))
    return [np.float32(1.0 / np.sqrt(float((i + 2) * (i + 1))) * inv_std)
            for i in range(d)]


def _enclosing_simplex(features):
    """Elevate features onto the lattice hyperplane and find their simplex.

    Everything is kept per coordinate (lists of [N] vectors): stacking
    [N, d + 1] arrays costs more than the arithmetic here.

    Args:
      features: float32 [N, d], static d >= 1.
    Returns:
      (base, rank, bary), lists over coordinates / remainders:
      base: d int32 [N], the remainder-0 point's first d coordinates divided
        by d + 1 (its last coordinate follows from the zero sum);
      rank: d + 1 int32 [N], each coordinate's rank in the simplex
        (0 = largest residual), after the reference's wrap-around;
      bary: d + 1 float32 [N], barycentric weight of the vertex of each
        remainder 0..d.
      The vertex of remainder r has coordinates
      ``(d + 1) * (base - [rank > d - r]) + r``.
    """
    d = int(features.shape[1])
    n = tf.shape(features)[0]
    scale = _scale_factors(d)
    # Elevation y = E f in the reference's order of float32 operations.
    elevated = [None] * (d + 1)
    partial = None
    for j in range(d, 0, -1):
        cf = features[:, j - 1] * scale[j - 1]
        elevated[j] = (-np.float32(j) * cf if partial is None
                       else partial - np.float32(j) * cf)
        partial = cf if partial is None else partial + cf
    elevated[0] = partial
    # Nearest multiple of d + 1 per coordinate, ties to the lower one.
    down = np.float32(1.0 / (d + 1))
    up = np.float32(d + 1)
    rem0, residual = [], []
    for e in elevated:
        v = e * down
        hi = tf.ceil(v) * up
        lo = tf.floor(v) * up
        r0 = tf.where_v2(hi - e < e - lo, hi, lo)
        rem0.append(tf.cast(r0, tf.int32))
        residual.append(e - r0)
    # Rank by residual, larger first; of two equal ones the lower index
    # counts as larger (the reference's pairwise loop).
    rank = [tf.zeros([n], tf.int32) for _ in range(d + 1)]
    for i in range(d + 1):
        for j in range(i + 1, d + 1):
            smaller = tf.cast(residual[i] < residual[j], tf.int32)
            rank[i] += smaller
            rank[j] += 1 - smaller
    # Bring the point back onto the plane (sum of rem0 != 0).
    shift = tf.add_n(rem0) // (d + 1)
    for k in range(d + 1):
        rk = rank[k] + shift
        wrap = (d + 1) * (tf.cast(rk < 0, tf.int32) - tf.cast(rk > d, tf.int32))
        rank[k] = rk + wrap
        rem0[k] = rem0[k] + wrap
    # Barycentric weights (Adams et al., p. 10): with u the scaled residuals
    # in ascending order (ascending = by rank, d first), the vertex of
    # remainder k weighs u[k] - u[k-1], and remainder 0 weighs 1 + u[0] - u[d]
    # (the reference adds that 1.0 in double).
    u = [(elevated[k] - tf.cast(rem0[k], tf.float32)) * down for k in range(d + 1)]
    for a in range(d + 1):  # sorting network: u ascending
        for b in range(d - a):
            u[b], u[b + 1] = tf.minimum(u[b], u[b + 1]), tf.maximum(u[b], u[b + 1])
    first = tf.cast(tf.cast(u[0], tf.float64) + (1.0 - tf.cast(u[d], tf.float64)),
                    tf.float32)
    bary = [first] + [u[k] - u[k - 1] for k in range(1, d + 1)]
    return [r // (d + 1) for r in rem0[:d]], rank, bary


class PermutohedralLattice(object):
    """The lattice of one image's features: its points, neighbours, and weights.

    Built in the graph from a features tensor of dynamic length. Points are
    numbered class by class (remainder 0, 1, .., d), sorted by key within a
    class.

    Attributes (tensors):
      dim: static feature dimension d.
      num_pixels: int32 scalar N.
      num_points: int32 scalar M.
      offsets: int32 [d + 1, N], the point that each pixel's vertex of
        remainder r is.
      bary: float32 [d + 1, N], its barycentric weight.
      n1, n2: d + 1 int32 [M], the neighbour of each point along direction j
        (n1: coordinates - 1 except coordinate j + d; n2: the opposite), -1
        where that point is not in the lattice.
    """

    def __init__(self, features, name=None):
        features = tf.convert_to_tensor(features, tf.float32)
        self.dim = int(features.shape[1])
        with tf.name_scope(name, "permutohedral_lattice", [features]):
            self.num_pixels = tf.shape(features)[0]
            base, rank, bary = _enclosing_simplex(features)
            self.bary = tf.stack(bary)
            self._hash(base, rank)

    def _hash(self, base, rank):
        d = self.dim
        # Mixed-radix packing of the d lattice coordinates (divided by d + 1),
        # first coordinate most significant, with a margin of one step so
        # that every neighbour of a point packs without carries: then a
        # neighbour's key is the point's key plus a constant per class.
        low = [tf.reduce_min(b) - 2 for b in base]
        span = [tf.cast(tf.reduce_max(b) - l + 2, tf.int64) for b, l in zip(base, low)]
        bits = tf.add_n([tf.log(tf.cast(s, tf.float64)) for s in span]) / np.log(2.0)
        check = tf.debugging.assert_less(
            bits, tf.constant(float(_MAX_KEY_BITS), tf.float64),
            message="Permutohedral lattice keys do not fit in int64: the "
                    "features span too wide a range (a standard deviation "
                    "far too small for the image?).")
        strides = [None] * d
        strides[d - 1] = tf.constant(1, tf.int64)
        for k in range(d - 2, -1, -1):
            strides[k] = strides[k + 1] * span[k + 1]
        stride_col = tf.stack(strides)[:, None]  # [d, 1]
        key0 = tf.reduce_sum(tf.cast(tf.stack(base) - tf.stack(low)[:, None], tf.int64)
                             * stride_col, axis=0)
        with tf.control_dependencies([check]):
            key0 = tf.identity(key0)
        upper_rank = tf.stack(rank[:d])  # [d, N]
        zero = tf.constant(0, tf.int64)
        tables, local, sizes = [], [], []
        for r in range(d + 1):
            key = key0
            if r:
                key = key0 - tf.reduce_sum(
                    tf.cast(upper_rank > d - r, tf.int64) * stride_col, axis=0)
            unique, index = tf.unique(key, out_idx=tf.int32)
            table = tf.sort(unique)
            position = tf.searchsorted(table[None], unique[None], out_type=tf.int32)[0]
            tables.append(table)
            local.append(tf.gather(position, index))
            sizes.append(tf.shape(table)[0])
        starts = [tf.constant(0, tf.int32)]
        for r in range(d):
            starts.append(starts[-1] + sizes[r])
        self.num_points = starts[-1] + sizes[d]
        self.offsets = tf.stack([local[r] + starts[r] for r in range(d + 1)])
        # n1 along direction j: a point of class r >= 1 has its neighbour in
        # class r - 1 with coordinate j one step up; one of class 0 in class
        # d with every other coordinate one step down. Direction d moves the
        # implicit last coordinate. One search per target class.
        steps = tf.stack(strides + [zero])[:, None]  # [d + 1, 1]
        total = tf.add_n(strides)
        found = [None] * (d + 1)  # per source class: [d + 1, m_r]
        for target in range(d + 1):
            r = (target + 1) % (d + 1)
            queries = tables[r][None] + (steps if r else steps - total)
            found[r] = tf.reshape(
                _lookup(tables[target], tf.reshape(queries, [-1]), starts[target]),
                [d + 1, -1])
        n1 = tf.concat(found, 1)
        self.n1 = [n1[j] for j in range(d + 1)]
        # n2 is n1's inverse: n1_j(p) = q  <=>  n2_j(q) = p. A max over the
        # (at most one) p of each q; empty segments come out as the minimum
        # int32 and mean "absent".
        m = self.num_points
        points = tf.range(m)
        self.n2 = []
        for j in range(d + 1):
            segment = tf.where_v2(self.n1[j] >= 0, self.n1[j], m)
            inverse = tf.math.unsorted_segment_max(points, segment, m + 1)[:m]
            self.n2.append(tf.where_v2(inverse >= 0, inverse, -1))


def _lookup(table, query, start):
    """start + index of each query in the sorted table, -1 where absent."""
    last = tf.shape(table)[0] - 1
    pos = tf.minimum(tf.searchsorted(table[None], query[None], out_type=tf.int32)[0], last)
    return tf.where_v2(tf.equal(tf.gather(table, pos), query), pos + start, -1)


def _columns(vectors):
    """Vectors as the columns of a matrix (cheaper than tf.stack(axis=1) here)."""
    return tf.transpose(tf.stack(vectors))


class _SparseMatrix(object):
    """A sparse matrix for ``SparseTensorDenseMatMul`` with int32 indices.

    (``tf.SparseTensor`` insists on int64 indices; int32 halves their memory
    and their share of the memory traffic.)
    """

    def __init__(self, indices, values, shape):
        self.indices = indices
        self.values = values
        self.shape = tf.cast(tf.stack(shape), tf.int64)

    def matmul(self, dense, adjoint=False):
        return tf.raw_ops.SparseTensorDenseMatMul(
            a_indices=self.indices, a_values=self.values, a_shape=self.shape,
            b=dense, adjoint_a=adjoint)


class _LatticeOperators(object):
    """The sparse matrices of one lattice, shared by every filter on it."""

    def __init__(self, lattice):
        d = lattice.dim
        n = lattice.num_pixels
        self.lattice = lattice
        self.n, self.m = n, lattice.num_points
        pixels = tf.range(n)
        # Splat entries remainder-major: consecutive entries write into one
        # class's points, in the order of the pixels that reach them (the
        # fastest order measured for the transposed product).
        self.splat_indices = _columns([tf.tile(pixels, [d + 1]),
                                       tf.reshape(lattice.offsets, [-1])])
        # Slice entries pixel-major: each output row is finished at once.
        self.slice_indices = _columns(
            [tf.reshape(tf.tile(pixels[:, None], [1, d + 1]), [-1]),
             tf.reshape(tf.transpose(lattice.offsets), [-1])])
        # Directions 0, 1, .., d in turn, as the reference.
        self.blurs = [self._blur_matrix(j) for j in range(d + 1)]

    def _blur_matrix(self, j):
        """B_j = 2 I + N1_j + N2_j, the [1 2 1] blur along direction j.

        Rows in order, each row's entries together (self, n1, n2): the
        product then finishes an output row at a time. A missing neighbour
        has no entry, as it contributes zero in the reference.
        """
        lattice = self.lattice
        points = tf.range(self.m)
        candidates = tf.reshape(_columns([points, lattice.n1[j], lattice.n2[j]]), [-1])
        kept = tf.cast(tf.where(candidates >= 0)[:, 0], tf.int32)
        indices = _columns([kept // 3, tf.gather(candidates, kept)])
        values = tf.where_v2(tf.equal(kept % 3, 0), 2.0, 1.0)
        return _SparseMatrix(indices, values, [self.m, self.m])

    def filter(self, splat_scale=None, slice_scale=None):
        """The lattice filter as a function of [N, C] values.

        Computes ``slice_scale * K(splat_scale * values)``, K the reference's
        lattice filter (including alpha); a scale of None is 1.
        """
        d = self.lattice.dim
        bary = self.lattice.bary  # [d + 1, N]
        splat_w = bary if splat_scale is None else bary * splat_scale[None]
        # alpha, and 2^-(d+1) for the blur's [1 2 1] instead of [1 2 1] / 2.
        factor = np.float32(1.0 / (1.0 + 2.0 ** -d) * 0.5 ** (d + 1))
        slice_w = bary * (factor if slice_scale is None else slice_scale[None] * factor)
        splat = _SparseMatrix(self.splat_indices, tf.reshape(splat_w, [-1]), [self.n, self.m])
        slice_ = _SparseMatrix(self.slice_indices, tf.reshape(tf.transpose(slice_w), [-1]),
                               [self.n, self.m])
        blurs = self.blurs

        def apply(values):
            lattice_values = splat.matmul(values, adjoint=True)
            for blur in blurs:
                lattice_values = blur.matmul(lattice_values)
            return slice_.matmul(lattice_values)
        return apply


def lattice_filter(features, values):
    """The reference's permutohedral filter, unnormalised.

    Approximates ``sum_j exp(-|f_i - f_j|^2 / 2) v_j`` up to a constant
    factor (features already divided by the standard deviations).

    Args:
      features: float32 [N, d].
      values: float32 [N, C].
    Returns:
      float32 [N, C].
    """
    return _LatticeOperators(PermutohedralLattice(features)).filter()(values)


def symmetric_norm(operators):
    """pydensecrf's NORMALIZE_SYMMETRIC factor ``1 / sqrt(K(1) + 1e-20)``, [N]."""
    ones = tf.ones([operators.n, 1])
    response = operators.filter()(ones)[:, 0]
    return tf.cast(1.0 / tf.sqrt(tf.cast(response, tf.float64) + NORM_EPSILON), tf.float32)


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
    operators = _LatticeOperators(PermutohedralLattice(features))
    norm = symmetric_norm(operators)
    apply = operators.filter(splat_scale=norm, slice_scale=norm * np.float32(weight))

    def message(q):
        parts = [apply(part) for part in _split_channels(q, groups)]
        return parts[0] if len(parts) == 1 else tf.concat(parts, 1)
    return message


def dense_crf_graph(image, probs, params, channel_groups=2):
    """Mean-field inference of the dense CRF, as graph ops on one image.

    Args:
      image: [H, W, 3] RGB tensor, uint8 (as pydensecrf takes it) or float
        in 0..255.
      probs: float32 [H, W, C] softmax probabilities at the image's size.
      params: object with iterations, pos_w, pos_xy_std, bi_w, bi_xy_std,
        bi_rgb_std (the project's CrfParams); read while building the graph.
      channel_groups: the bilateral kernel filters the classes in this many
        groups that run in parallel (its sparse products are single-threaded);
        1 for a single chain. It does not change the result.
    Returns:
      float32 [H, W, C] marginals (argmax them for labels).
    """
    with tf.name_scope("dense_crf"):
        probs = tf.convert_to_tensor(probs, tf.float32)
        shape = tf.shape(probs)
        height, width, classes = shape[0], shape[1], shape[2]
        flat = tf.reshape(probs, [-1, classes])
        flat.set_shape([None, tf.compat.dimension_value(probs.shape[2])])
        neg_unary = tf.log(tf.clip_by_value(flat, PROB_EPSILON, 1.0))
        q = tf.nn.softmax(neg_unary)
        messages = []
        if params.iterations > 0:
            # A zero weight multiplies its kernel's message by 0: skipped.
            if params.pos_w != 0:
                with tf.name_scope("gaussian"):
                    messages.append(_message_function(
                        pixel_features(height, width, params.pos_xy_std),
                        params.pos_w, 1))
            if params.bi_w != 0:
                with tf.name_scope("bilateral"):
                    messages.append(_message_function(
                        pixel_features(height, width, params.bi_xy_std, image,
                                       params.bi_rgb_std),
                        params.bi_w, channel_groups))
        if messages:
            # A while loop, not ten unrolled copies: the graph stays small,
            # so Grappler's first pass over it takes a fraction of a second
            # instead of seconds; the ops of one iteration still run side by
            # side.
            def step(i, q):
                return i + 1, tf.nn.softmax(tf.add_n([neg_unary] + [m(q) for m in messages]))
            _, q = tf.while_loop(lambda i, q: i < params.iterations, step,
                                 [tf.constant(0), q], parallel_iterations=1,
                                 name="mean_field")
        return tf.reshape(q, shape)


def default_session_config(threads=None):
    """Session options for the CRF graph.

    One intra-op and one inter-op thread per core: the sparse products are
    single-threaded, so the parallelism comes from running them side by
    side. Grappler is switched off: it finds nothing to speed up in this
    graph (measured: same time per image) but its first pass took ~1.5 s.
    """
    threads = threads or available_cores()
    config = tf.ConfigProto(intra_op_parallelism_threads=threads,
                            inter_op_parallelism_threads=threads,
                            allow_soft_placement=True)
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    config.gpu_options.allow_growth = True
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
        bi_rgb_std (the project's CrfParams).
      num_classes: optional class count to build the graph for now.
      session_config: tf.ConfigProto; default one thread per core.
      channel_groups: see ``dense_crf_graph``; default the core count.
    """

    def __init__(self, params, num_classes=None, session_config=None,
                 channel_groups=None):
        self.params = params
        self._config = session_config or default_session_config()
        self._groups = channel_groups or max(1, min(2, available_cores()))
        self._graphs = {}
        if num_classes:
            self._graph_for(num_classes)

    def _graph_for(self, classes):
        if classes not in self._graphs:
            graph = tf.Graph()
            with graph.as_default():
                image = tf.placeholder(tf.uint8, [None, None, 3], name="image")
                probs = tf.placeholder(tf.float32, [None, None, classes], name="probs")
                marginals = dense_crf_graph(image, probs, self.params, self._groups)
            graph.finalize()
            session = tf.Session(graph=graph, config=self._config)
            self._graphs[classes] = (session, image, probs, marginals)
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
        image, probs = check_inputs(image, probs)
        probs = probs.astype(np.float32, copy=False)
        session, image_ph, probs_ph, marginals = self._graph_for(probs.shape[2])
        return session.run(marginals, {image_ph: image.astype(np.uint8, copy=False),
                                       probs_ph: probs})

    def close(self):
        for session, _, _, _ in self._graphs.values():
            session.close()
        self._graphs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
