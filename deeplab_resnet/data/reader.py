"""List files in, preprocessed images and labels out, queue style: training crops or whole images.

A list file (``data.lists``) names image/label pairs. A ``tf.compat.v1``
producer queue walks the list and reader threads (queue runners) decode
it; ``TrainingReader`` augments, crops and batches the pairs
(``data.augment``), ``EvaluationReader`` hands out whole images in list
order. ``ListReader`` is what the two share.

Decoding runs in Python (PIL, through ``tf.numpy_function``) rather than
``tf.io.decode_*`` because VOC labels are palette PNGs whose pixel values *are*
the class ids: ``decode_png`` returns the palette's colours instead, and
training on those fails silently. PIL also reads the photos TF's decoders
reject or misread (CMYK JPEGs, 16-bit PNGs, palette images).

Preprocessing is Caffe's: BGR channel order minus ``IMG_MEAN``
(``images.bgr_minus_mean``).

Labels are checked as they are read (``label_checks.check_label``: mode, size,
values; a ``--label-map`` turns stored values into training ids first), and
``ListReader.check`` scans a sample up front with the scan
``dataset/check_labels.py`` runs.

A bad file met by a reader thread stops the queues through the coordinator,
so the consumer's ``sess.run`` fails instead of hanging; the original
exception, whose message names the file, is kept and raised by
``ListReader.raise_if_failed()``.
"""
import logging
import threading
import time

import numpy as np
from PIL import Image

from deeplab_resnet.constants import IGNORE_LABEL
from deeplab_resnet.data import label_checks, label_maps
from deeplab_resnet.data.augment import (image_mirroring, image_scaling,
                                         random_crop_and_pad_image_and_labels)
from deeplab_resnet.data.label_files import (DECODE_ERRORS, UNREADABLE, WIDE_MODES,
                                             UnreadableError, load_label, upright)
from deeplab_resnet.data.lists import read_labeled_image_list
from deeplab_resnet.images import bgr_minus_mean
from deeplab_resnet.runtime import tf

log = logging.getLogger(__name__)

# Decoded evaluation images waiting for the network.
EVAL_PREFETCH = 2


def wide_to_8_bits(wide):
    """A wide single-channel image (16-bit, 32-bit or float) as uint8: ``wide / 257``.

    A 16-bit PNG's range is 0..65535 by its specification, whatever the
    values in one file: dividing only when the largest exceeds 255 turned a
    dark photo white and a constant 256 near-black. Other wide modes (32-bit
    integer, float TIFFs) are read on the same 0..65535 scale, clipped.
    """
    return np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8)


def load_image(path, orient=False, fix=None):
    """A photo as RGB, whatever its file's mode, decoded in full.

    Grayscale and palette images are expanded to RGB, CMYK is converted,
    alpha is dropped and 16-bit images are scaled to 8 bits
    (``wide_to_8_bits``).

    Args:
      path: a JPEG, PNG or any other format PIL reads.
      orient: apply the EXIF orientation, so that the pixels are upright as
        photo viewers show them (phones store portrait photos on their side
        with an orientation tag). Off, pixels stay on the raw grid, which is
        what VOC-style label files are drawn on.
      fix: what the error tells the user to do (default: for a list file).
    Returns:
      uint8 array [H, W, 3], RGB.
    Raises:
      IOError: the file cannot be read as an image (a truncated JPEG too).
    """
    try:
        with Image.open(path) as image:
            image.load()
            if orient:
                image = upright(image)
            if image.mode.startswith(WIDE_MODES):
                image = Image.fromarray(wide_to_8_bits(np.asarray(image, dtype=np.float64)))
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except DECODE_ERRORS as err:
        raise UnreadableError("image", path, err, fix)


def load_pair(image_path, label_path, num_classes=None,
              ignore_label=IGNORE_LABEL, label_map=None):
    """An image and its label in training ids, checked to fit each other.

    The image stays on its raw pixel grid, VOC's convention for the label
    files drawn on it, unless only its EXIF-oriented form has the label's
    size (a labelling tool that showed the photo upright).

    Args:
      num_classes: when given, every label value (after ``label_map``) must
        be a class id below ``num_classes`` or ``ignore_label``.
      label_map: ``label_maps.LabelMap`` from stored values to training ids, or None.
    Returns:
      (image uint8 [H, W, 3] RGB, label uint8 [H, W]).
    Raises:
      IOError: a file cannot be read; ValueError: the label does not fit
        (the message says the likely cause and the fix).
    """
    image = load_image(image_path)
    label = load_label(label_path)
    if label.shape != image.shape[:2]:
        oriented = load_image(image_path, orient=True)
        if label.shape == oriented.shape[:2]:
            image = oriented
    label = label_checks.check_label(label, label_path, num_classes,
                                     ignore_label, label_map, image.shape[:2], image_path)
    return image, label


# ----------------------------------------------------------------- readers
class ListReader(object):
    """What both readers share: the list, one decoded pair at a time, the
    label checks, the queue threads and the file error they met.

    ``TrainingReader`` crops and batches the pairs, ``EvaluationReader``
    hands out whole images in list order; each builds its part of the graph
    in ``_build(image, label)`` from one decoded pair (BGR minus mean image
    float32 [H, W, 3], label uint8 [H, W, 1]).

    Start the queues with ``start(sess)`` before fetching. When a
    ``sess.run`` fails with a ``tf.errors.OpError``, call
    ``raise_if_failed()`` to get the file error that caused it.

    Args:
      data_dir, data_list: see ``read_labeled_image_list``.
      shuffle: shuffle the list every pass (False: the list's order).
      ignore_label: label value left out of the loss and the scores.
      coord: the ``tf.train.Coordinator`` the reader threads report to (a new
        one by default).
      num_classes: when given, a label value that is neither a class id below
        it nor ``ignore_label`` is an error naming the file.
      label_map: --label-map: a file (see ``label_maps.read_label_map``), a
        ``label_maps.LabelMap`` or None; applied to every label as it is read.
      skip_bad_images: a pair that cannot be read is logged and replaced by
        the next readable one in the list, instead of stopping the queues.
      shard: (index, count): read rows index::count of the list only, worker
        ``index``'s share of ``count`` (a strided shard, so that the workers'
        batches of one step together are one process's batch of the list
        in order); None for the whole list.
    Raises:
      IOError, ValueError: from ``read_labeled_image_list`` and
        ``label_maps.read_label_map``.
    """

    def __init__(self, data_dir, data_list, *, shuffle, ignore_label=IGNORE_LABEL,
                 coord=None, num_classes=None, label_map=None, skip_bad_images=False,
                 shard=None):
        self.data_dir = data_dir
        self.data_list = data_list
        self.ignore_label = ignore_label
        self.coord = coord if coord is not None else tf.train.Coordinator()
        self.shuffle = shuffle
        self.num_classes = num_classes
        self.label_map = label_maps.read_label_map(label_map, num_classes, ignore_label)
        self.skip_bad_images = skip_bad_images
        self.failure = None
        self._skipped = set()
        self._lock = threading.Lock()
        self._read_list(shard)
        first_runner = len(tf.get_collection(tf.GraphKeys.QUEUE_RUNNERS))
        with tf.name_scope("image_reader"):
            self._build(*self._decoded())
        self._runners = tf.get_collection(tf.GraphKeys.QUEUE_RUNNERS)[first_runner:]

    def _read_list(self, shard):
        """The list's pairs (this worker's ``shard`` of them), checked to exist."""
        self.image_list, self.label_list, self.line_numbers = read_labeled_image_list(
            self.data_dir, self.data_list, with_line_numbers=True)
        self.num_listed = len(self.image_list)
        if shard is not None:
            index, count = shard
            self.image_list, self.label_list, self.line_numbers = (
                rows[index::count] for rows in (self.image_list, self.label_list,
                                                self.line_numbers))
            if not self.image_list:
                raise ValueError("%s lists too few images for worker %d of %d."
                                 % (self.data_list, index, count))
        self._index = {path: i for i, path in enumerate(self.image_list)}
        self.num_images = len(self.image_list)

    def _decoded(self):
        """One listed pair at a time, decoded and checked: (image, label)."""
        self.image_path, label_path = tf.train.slice_input_producer(
            [tf.convert_to_tensor(self.image_list, dtype=tf.string),
             tf.convert_to_tensor(self.label_list, dtype=tf.string)],
            shuffle=self.shuffle)
        image, label = tf.numpy_function(self._load, [self.image_path, label_path],
                                         [tf.uint8, tf.uint8], name="load_pair")
        image.set_shape([None, None, 3])
        label.set_shape([None, None])
        # RGB -> BGR, minus the mean: what the Caffe model was trained on.
        return bgr_minus_mean(tf.cast(image, tf.float32)), tf.expand_dims(label, axis=2)

    def _build(self, image, label):
        raise NotImplementedError

    def check(self, sample_size=1000, seed=0):
        """Scan a sample of the pairs now, so bad files fail before training.

        Every listed file was checked to exist when the list was read; this
        runs check_labels.py's scan (``label_checks.scan_labels``) on up to
        ``sample_size`` pairs (all of a shorter list): each image decoded in
        full (a truncated JPEG fails here, not hours into training), label
        mode, size, values (after the label map) when the reader has
        ``num_classes``, and masks that hold nothing but background and
        ignore. Pairs beyond the sample are checked by the reader threads as
        they come. With ``skip_bad_images`` unreadable files are warnings.

        Raises:
          IOError, ValueError: the first problem found, with its fix.
        """
        indices = label_checks.sample_indices(self.num_images, sample_size, seed)
        start = time.time()
        result = label_checks.scan_labels(
            [(self.image_list[i], self.label_list[i]) for i in indices],
            self.num_classes, self.ignore_label, self.label_map, log_interval=None,
            decode_images=True)
        if self.skip_bad_images:
            unreadable = [p for p in result.problems if p.kind == UNREADABLE]
            self._refuse_if_none_readable(indices, unreadable)
            result.problems = [p for p in result.problems if p.kind != UNREADABLE]
            result.warnings = unreadable + result.warnings
        if result.problems:
            raise ValueError(label_checks.scan_error(result, self.data_list))
        label_checks.log_warnings(result.warnings, log)
        log.info("checked %d of %d labels in %s (%.2f s)%s", result.checked,
                 self.num_images, self.data_list, time.time() - start,
                 "; label map " + self.label_map.describe() if self.label_map
                 else "")

    def _refuse_if_none_readable(self, indices, unreadable):
        """--skip-bad-images replaces a bad pair by a readable one; with no
        readable pair in the whole list the queues would close at step 1."""
        bad = {problem.path for problem in unreadable}
        if unreadable and len(indices) == self.num_images and all(
                self.image_list[i] in bad or self.label_list[i] in bad for i in indices):
            raise IOError("No image/label pair listed in %s (--data-list) can be read, "
                          "so --skip-bad-images leaves nothing to train on; the first: "
                          "%s Fix or replace the files." % (self.data_list,
                                                            unreadable[0].message))

    def _load(self, image_path, label_path):
        image_path, label_path = image_path.decode(), label_path.decode()
        try:
            return load_pair(image_path, label_path, self.num_classes,
                             self.ignore_label, self.label_map)
        except Exception as err:
            if self.skip_bad_images and isinstance(err, (IOError, ValueError)):
                return self._replacement(image_path, err)
            with self._lock:
                if self.failure is None:
                    self.failure = err
            raise

    def _replacement(self, image_path, err):
        """--skip-bad-images: log the bad pair, read the next good one."""
        index = self._index[image_path]
        self._skip(index, err)
        for step in range(1, self.num_images):
            other = (index + step) % self.num_images
            if self.image_list[other] in self._skipped:
                continue
            try:
                return load_pair(self.image_list[other], self.label_list[other],
                                 self.num_classes, self.ignore_label, self.label_map)
            except (IOError, ValueError) as other_err:
                self._skip(other, other_err)
        raise IOError("No pair in %s can be read; see the warnings above."
                      % self.data_list)

    def _skip(self, index, err):
        """Remember a bad pair, and log it the first time."""
        with self._lock:
            first_time = self.image_list[index] not in self._skipped
            self._skipped.add(self.image_list[index])
        if first_time:
            log.warning("skipping line %d of %s (--skip-bad-images): %s",
                        self.line_numbers[index], self.data_list, err)

    def start(self, sess):
        """Start this reader's queue threads for ``sess``; returns them for
        ``coord.join``. Other readers' threads in the graph stay stopped: a
        file error in one of them would stop this reader's queues too."""
        return [thread for runner in self._runners
                for thread in runner.create_threads(sess, coord=self.coord,
                                                    daemon=True, start=True)]

    def raise_if_failed(self, advice=""):
        """Raise the file error a reader thread met, if any.

        The error (IOError or ValueError, as the thread met it) names the
        file, the line of the list that lists it, and ends with ``advice``.
        """
        failure = self.failure
        if failure is None:
            return
        text = str(failure)
        index = next((i for i, pair in enumerate(zip(self.image_list, self.label_list))
                      if pair[0] in text or pair[1] in text), None)
        where = ("" if index is None else
                 " It is line %d of %s." % (self.line_numbers[index], self.data_list))
        kind = IOError if isinstance(failure, (IOError, OSError)) else ValueError
        raise kind("%s%s%s" % (text, where, advice)) from failure


class TrainingReader(ListReader):
    """Training pairs: each augmented and cropped to ``data.input_size``,
    batched by ``dequeue(n)`` from ``data.reader_threads`` reader threads.

    Args:
      data: ``data.config.DataConfig``: the list, its labels, the crops
        (smaller images are padded, see
        ``random_crop_and_pad_image_and_labels``) and their augmentation.
        With ``shuffle`` False the list order is kept, batches included
        (one reader thread is used for that).
      num_classes, coord, shard: see ``ListReader``.
    """

    def __init__(self, data, *, num_classes=None, coord=None, shard=None):
        self.input_size = tuple(data.input_size)
        self.num_threads = data.reader_threads if data.shuffle else 1
        self.data = data
        super().__init__(data.data_dir, data.data_list, shuffle=data.shuffle,
                         ignore_label=data.ignore_label, coord=coord,
                         num_classes=num_classes, label_map=data.label_map,
                         skip_bad_images=data.skip_bad_images, shard=shard)

    def _build(self, image, label):
        if self.data.random_scale or self.data.scale_set:
            image, label = image_scaling(image, label, scale_set=self.data.scale_set)
        if self.data.random_mirror:
            image, label = image_mirroring(image, label)
        self._example = random_crop_and_pad_image_and_labels(
            image, label, self.input_size[0], self.input_size[1], self.ignore_label)

    def dequeue(self, num_elements):
        """A batch of ``num_elements`` training pairs.

        Returns:
          (image_batch float32 [N, h, w, 3] BGR minus mean,
           label_batch uint8 [N, h, w, 1]).
        """
        first_runner = len(tf.get_collection(tf.GraphKeys.QUEUE_RUNNERS))
        batch = tf.train.batch(list(self._example), num_elements,
                               num_threads=self.num_threads,
                               capacity=max(32, 4 * num_elements),
                               name="image_reader_batch")
        self._runners += tf.get_collection(tf.GraphKeys.QUEUE_RUNNERS)[first_runner:]
        return batch


class EvaluationReader(ListReader):
    """Whole images in list order, for evaluation: no augmentation, each at
    its own size.

    ``.image`` [1, H, W, 3], ``.label`` [1, H, W, 1] and ``.image_path`` (a
    string scalar) come from the same list entry each time they are fetched
    in one ``sess.run``. The list repeats forever; ``.num_images`` entries
    make one pass.

    Args:
      data: ``data.config.EvalDataConfig``: the list and its labels
        (its ``num_images`` is the caller's to count).
      coord, shard: see ``ListReader``.
    """

    def __init__(self, data, *, coord=None, shard=None):
        super().__init__(data.data_dir, data.data_list, shuffle=False,
                         ignore_label=data.ignore_label, coord=coord,
                         num_classes=data.num_classes, label_map=data.label_map, shard=shard)

    def _build(self, image, label):
        # A thread of its own decodes the next images while the network runs
        # on this one (training's batch queue does the same); one thread
        # keeps the list order.
        prefetch = tf.FIFOQueue(EVAL_PREFETCH, [tf.string, tf.float32, tf.uint8],
                                name="prefetch")
        tf.train.add_queue_runner(tf.train.QueueRunner(
            prefetch, [prefetch.enqueue([self.image_path, image, label])]))
        self.image_path, image, label = prefetch.dequeue()
        image.set_shape([None, None, 3])
        label.set_shape([None, None, 1])
        self.image = tf.expand_dims(image, axis=0)
        self.label = tf.expand_dims(label, axis=0)
