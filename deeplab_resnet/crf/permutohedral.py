"""The permutohedral lattice filter as TensorFlow graph ops, as pydensecrf computes it.

The fully connected CRF of Kraehenbuehl & Koltun (NIPS 2011, "Efficient
Inference in Fully Connected CRFs with Gaussian Edge Potentials") with the
model and inference of their code as pydensecrf wraps it and as
``deeplab_resnet.crf.dense_crf`` calls it (mean field itself is in
``backend_tf``):

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
which it leaves alone (see ``backend_tf._divide``).

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

Speed, honestly: each sparse entry costs TensorFlow's CPU kernel ~5 ns plus
~0.7 ns per class, so an iteration on a 500x334 VOC photo (~7M entries of
21 classes) takes about as much CPU as pydensecrf's hand-written loops, and
the per-image lattice build about as much as its hash table. The gain over
pydensecrf on a CPU therefore comes only from the second core; on a GPU the
same graph runs unchanged.
"""
import numpy as np

from deeplab_resnet.runtime import tf

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


def _elevate(features, d):
    """Elevation y = E f onto the lattice hyperplane, d + 1 float32 [N] vectors,
    in the reference's order of float32 operations."""
    scale = _scale_factors(d)
    elevated = [None] * (d + 1)
    partial = None
    for j in range(d, 0, -1):
        cf = features[:, j - 1] * scale[j - 1]
        elevated[j] = (-np.float32(j) * cf if partial is None
                       else partial - np.float32(j) * cf)
        partial = cf if partial is None else partial + cf
    elevated[0] = partial
    return elevated


def _nearest_remainder_zero(elevated, d):
    """(rem0, residual): per coordinate, the nearest multiple of d + 1 (ties
    to the lower one) as int32, and the float32 distance to it."""
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
    return rem0, residual


def _rank_residuals(residual, n, d):
    """Each coordinate's rank by residual, larger first; of two equal ones the
    lower index counts as larger (the reference's pairwise loop)."""
    rank = [tf.zeros([n], tf.int32) for _ in range(d + 1)]
    for i in range(d + 1):
        for j in range(i + 1, d + 1):
            smaller = tf.cast(residual[i] < residual[j], tf.int32)
            rank[i] += smaller
            rank[j] += 1 - smaller
    return rank


def _wrap_onto_plane(rank, rem0, d):
    """Bring the remainder-0 point back onto the plane (its coordinates need
    not sum to 0): shift the ranks, wrapping coordinates around. In place."""
    shift = tf.add_n(rem0) // (d + 1)
    for k in range(d + 1):
        rk = rank[k] + shift
        wrap = (d + 1) * (tf.cast(rk < 0, tf.int32) - tf.cast(rk > d, tf.int32))
        rank[k] = rk + wrap
        rem0[k] = rem0[k] + wrap


def _barycentric(elevated, rem0, d):
    """Barycentric weights (Adams et al., p. 10), d + 1 float32 [N].

    With u the scaled residuals in ascending order (ascending = by rank, d
    first), the vertex of remainder k weighs u[k] - u[k-1], and remainder 0
    weighs 1 + u[0] - u[d] (the reference adds that 1.0 in double).
    """
    down = np.float32(1.0 / (d + 1))
    u = [(elevated[k] - tf.cast(rem0[k], tf.float32)) * down for k in range(d + 1)]
    for a in range(d + 1):  # sorting network: u ascending
        for b in range(d - a):
            u[b], u[b + 1] = tf.minimum(u[b], u[b + 1]), tf.maximum(u[b], u[b + 1])
    first = tf.cast(tf.cast(u[0], tf.float64) + (1.0 - tf.cast(u[d], tf.float64)),
                    tf.float32)
    return [first] + [u[k] - u[k - 1] for k in range(1, d + 1)]


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
    elevated = _elevate(features, d)
    rem0, residual = _nearest_remainder_zero(elevated, d)
    rank = _rank_residuals(residual, tf.shape(features)[0], d)
    _wrap_onto_plane(rank, rem0, d)
    bary = _barycentric(elevated, rem0, d)
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
        """Number the lattice points and find their neighbours (see the class doc)."""
        d = self.dim
        key0, strides = _pack_keys(base)
        tables, local, sizes = _class_tables(key0, strides, rank, d)
        starts = [tf.constant(0, tf.int32)]
        for r in range(d):
            starts.append(starts[-1] + sizes[r])
        self.num_points = starts[-1] + sizes[d]
        self.offsets = tf.stack([local[r] + starts[r] for r in range(d + 1)])
        n1 = _neighbours(tables, starts, strides, d)
        self.n1 = [n1[j] for j in range(d + 1)]
        self.n2 = [_inverse(n1_j, self.num_points) for n1_j in self.n1]


def _pack_keys(base):
    """(key0, strides): the remainder-0 points' keys, int64 [N], and the stride
    of each coordinate, int64 scalars.

    Mixed-radix packing of the d lattice coordinates (divided by d + 1),
    first coordinate most significant, with a margin of one step so that
    every neighbour of a point packs without carries: then a neighbour's key
    is the point's key plus a constant per class.
    """
    d = len(base)
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
        return tf.identity(key0), strides


def _class_tables(key0, strides, rank, d):
    """Per remainder class r: the sorted keys of its points (``tf.unique``
    per class: keys of different remainders never coincide, and small tables
    are faster), each pixel's vertex as an index into them, and the count."""
    stride_col = tf.stack(strides)[:, None]  # [d, 1]
    upper_rank = tf.stack(rank[:d])  # [d, N]
    tables, local, sizes = [], [], []
    for r in range(d + 1):
        key = key0
        if r:
            key = key0 - tf.reduce_sum(
                tf.cast(upper_rank > d - r, tf.int64) * stride_col, axis=0)
        unique, index = tf.unique(key, out_idx=tf.int32)
        # The keys are distinct: the sorting permutation's inverse is where
        # each lands, with no search in the sorted table.
        order = tf.argsort(unique, stable=True)
        table = tf.gather(unique, order)
        position = tf.math.invert_permutation(order)
        tables.append(table)
        local.append(tf.gather(position, index))
        sizes.append(tf.shape(table)[0])
    return tables, local, sizes


def _neighbours(tables, starts, strides, d):
    """n1 of every point, int32 [d + 1, M] (-1 where absent).

    n1 along direction j: a point of class r >= 1 has its neighbour in
    class r - 1 with coordinate j one step up; one of class 0 in class d
    with every other coordinate one step down. Direction d moves the
    implicit last coordinate. One search per target class.
    """
    steps = tf.stack(strides + [tf.constant(0, tf.int64)])[:, None]  # [d + 1, 1]
    total = tf.add_n(strides)
    found = [None] * (d + 1)  # per source class: [d + 1, m_r]
    for target in range(d + 1):
        r = (target + 1) % (d + 1)
        queries = tables[r][None] + (steps if r else steps - total)
        found[r] = tf.reshape(
            _lookup(tables[target], tf.reshape(queries, [-1]), starts[target]),
            [d + 1, -1])
    return tf.concat(found, 1)


def _inverse(n1_j, m):
    """n2_j, n1_j's inverse: n1_j(p) = q  <=>  n2_j(q) = p.

    A max over the (at most one) p of each q; empty segments come out as
    the minimum int32 and mean "absent" (-1).
    """
    segment = tf.where_v2(n1_j >= 0, n1_j, m)
    inverse = tf.math.unsorted_segment_max(tf.range(m), segment, m + 1)[:m]
    return tf.where_v2(inverse >= 0, inverse, -1)


def _lookup(table, query, start):
    """start + index of each query in the sorted table, -1 where absent."""
    last = tf.shape(table)[0] - 1
    pos = tf.minimum(tf.searchsorted(table[None], query[None], out_type=tf.int32)[0], last)
    return tf.where_v2(tf.equal(tf.gather(table, pos), query), pos + start, -1)


def _columns(vectors):
    """Vectors as the columns of a matrix."""
    return _transposed(tf.stack(vectors))


def _transposed(matrix):
    """The transpose of an int32 matrix, moved as float32 bits.

    A transpose is ~3x cheaper than stacking along axis 1 here, but
    oneDNN's rewrite of an int32 Transpose says "oneDNN supports DT_INT32
    only on platforms with AVX-512" on stderr (on AVX-512 CPUs too); the
    bits are moved unchanged either way.
    """
    return tf.bitcast(tf.transpose(tf.bitcast(matrix, tf.float32)), tf.int32)


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


class LatticeOperators(object):
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
             tf.reshape(_transposed(lattice.offsets), [-1])])
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
    return LatticeOperators(PermutohedralLattice(features)).filter()(values)


def symmetric_norm(operators):
    """pydensecrf's NORMALIZE_SYMMETRIC factor ``1 / sqrt(K(1) + 1e-20)``, [N]."""
    ones = tf.ones([operators.n, 1])
    response = operators.filter()(ones)[:, 0]
    return tf.cast(1.0 / tf.sqrt(tf.cast(response, tf.float64) + NORM_EPSILON), tf.float32)
