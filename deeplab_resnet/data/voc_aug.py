"""DeepLab's augmented PASCAL VOC 2012 training set ("train_aug"), from VOC and SBD.

DeepLab-v2 trains on 10,582 images, not VOC 2012's 1,464: the Semantic
Boundaries Dataset (SBD, Hariharan et al., ICCV 2011) annotated 11,355 VOC
2011 photos, and its train and val splits are merged with VOC 2012 train.
VOC 2012 val (1,449 images) is taken out again, since that is where mIoU is
reported; many of its photos are in SBD's train split.

SBD ships its class maps as MATLAB files: ``cls/<name>.mat`` holds a 1x1
struct ``GTcls`` whose field ``Segmentation`` is a uint8 [H, W] class map
(0 background, 1..20 VOC classes, no void border); ``Boundaries`` and
``CategoriesPresent`` are not needed. VOC's own labels are palette PNGs
with a 255 void border around objects. Both are written as palette PNGs of
class ids to ``SegmentationClassAug/``; where both exist, VOC's annotation
wins (it is the finer one and the one val is scored against).

Images SBD has but ``JPEGImages`` lacks are hard-linked (or copied) in, so
one ``--data-dir`` serves every list line.
"""
import collections
import logging
import os
import shutil

import numpy as np
import scipy.io

from deeplab_resnet.progress import logged_progress
from deeplab_resnet.constants import IGNORE_LABEL, NUM_CLASSES
from deeplab_resnet.data import label_checks, label_files
from deeplab_resnet.data.lists import IMAGE_DIR, LABEL_DIR, list_text
from deeplab_resnet.files import atomic_write, save_label, text_needs_writing, write_text

log = logging.getLogger(__name__)

TRAIN_LIST = "train_aug.txt"
VAL_LIST = "val.txt"

# Relative paths that must exist, and what a user sees when one is missing.
VOC_LAYOUT = (
    (IMAGE_DIR, "the photos (<name>.jpg)"),
    ("SegmentationClass", "VOC's palette label PNGs"),
    (os.path.join("ImageSets", "Segmentation", "train.txt"), "VOC's train split"),
    (os.path.join("ImageSets", "Segmentation", "val.txt"), "VOC's val split"),
)
SBD_LAYOUT = (
    ("cls", "the class maps (<name>.mat with struct GTcls.Segmentation)"),
    ("img", "the photos (<name>.jpg)"),
    ("train.txt", "SBD's train split"),
    ("val.txt", "SBD's val split"),
)
# Where people often point the flags instead: (subdirectory that holds the
# layout, hint).
VOC_NESTING = ("VOC2012", os.path.join("VOCdevkit", "VOC2012"))
SBD_NESTING = ("dataset", os.path.join("benchmark_RELEASE", "dataset"))

Source = collections.namedtuple("Source", ["kind", "path"])  # kind: 'voc' | 'sbd'


def _check_layout(directory, layout, nesting, flag, what):
    """Raise IOError naming every missing piece of ``layout`` under ``directory``."""
    if not os.path.isdir(directory):
        raise IOError("%s %r is not a directory. Point it at %s." % (flag, directory, what))
    missing = ["%s (%s)" % (rel, desc) for rel, desc in layout
               if not os.path.exists(os.path.join(directory, rel))]
    if not missing:
        return
    message = ("%s %r does not look like %s: missing %s."
               % (flag, directory, what, "; ".join(missing)))
    for sub in nesting:
        candidate = os.path.join(directory, sub)
        if os.path.isdir(candidate):
            message += " Did you mean %s %s?" % (flag, candidate)
            break
    raise IOError(message)


def check_voc_dir(voc_dir):
    """Raise IOError unless ``voc_dir`` is VOCdevkit/VOC2012 (or alike)."""
    _check_layout(voc_dir, VOC_LAYOUT, VOC_NESTING, "--voc-dir",
                  "a PASCAL VOC 2012 directory (VOCdevkit/VOC2012)")


def check_sbd_dir(sbd_dir):
    """Raise IOError unless ``sbd_dir`` is SBD's benchmark_RELEASE/dataset."""
    _check_layout(sbd_dir, SBD_LAYOUT, SBD_NESTING, "--sbd-dir",
                  "SBD's benchmark_RELEASE/dataset directory")


def read_split(path):
    """Image names, one per line, in file order (blank lines skipped).

    Raises:
      ValueError: a line is not a bare name ('../x', 'a/b'): joined onto the
        VOC, SBD or output directory it would lead elsewhere, and a label
        would be written there.
    """
    names = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            name = line.strip()
            if name and (name in (os.curdir, os.pardir) or "/" in name or "\\" in name):
                raise ValueError("%s line %d: %r is not a bare image name such as "
                                 "2007_000032 (a path would lead outside its directory). "
                                 "Fix the line." % (path, number, name))
            if name:
                names.append(name)
    return names


def read_sbd_label(path):
    """The class map of an SBD ``cls/*.mat`` file: uint8 [H, W].

    Raises:
      ValueError: the file is not a MATLAB file with ``GTcls.Segmentation``.
    """
    try:
        mat = scipy.io.loadmat(path, variable_names=["GTcls"])
    except (ValueError, OSError, TypeError, NotImplementedError) as err:
        raise ValueError("%s is not a readable MATLAB file (%s). Re-extract SBD's "
                         "benchmark.tgz." % (path, err))
    gt = mat.get("GTcls")
    if (gt is None or gt.dtype.names is None or "Segmentation" not in gt.dtype.names
            or gt.size != 1):
        raise ValueError("%s has no 1x1 struct GTcls with a field Segmentation, as "
                         "SBD's cls/*.mat files do. Is this SBD's cls/ (class "
                         "maps) and not inst/ (instances)?" % path)
    label = np.asarray(gt["Segmentation"].flat[0])
    if label.ndim != 2:
        raise ValueError("%s: GTcls.Segmentation has shape %s, expected [H, W]."
                         % (path, label.shape))
    return label


def plan_splits(voc_train, voc_val, sbd_train, sbd_val):
    """(train_aug, val) name lists.

    train_aug is SBD train + SBD val + VOC train, minus VOC val, without
    duplicates, sorted; val is VOC val in its own order, without duplicates.
    """
    val = list(dict.fromkeys(voc_val))
    held_out = set(val)
    train = sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - held_out)
    return train, val


def _missing_message(names, what, fix):
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return "%d %s missing (%s). %s" % (len(names), what, shown, fix)


def plan_sources(names, voc_dir, sbd_dir):
    """Where each image's label and photo come from.

    Returns:
      (labels, images): dicts name -> ``Source`` (VOC's label preferred) and
      name -> path of the photo (VOC's JPEGImages preferred).
    Raises:
      IOError: some names have no label or no photo in either dataset.
    """
    voc_labels = os.path.join(voc_dir, "SegmentationClass")
    labels, images, no_label, no_image = {}, {}, [], []
    for name in names:
        voc_png = os.path.join(voc_labels, name + ".png")
        sbd_mat = os.path.join(sbd_dir, "cls", name + ".mat")
        if os.path.isfile(voc_png):
            labels[name] = Source("voc", voc_png)
        elif os.path.isfile(sbd_mat):
            labels[name] = Source("sbd", sbd_mat)
        else:
            no_label.append(name)
        for candidate in (os.path.join(voc_dir, IMAGE_DIR, name + ".jpg"),
                          os.path.join(sbd_dir, "img", name + ".jpg")):
            if os.path.isfile(candidate):
                images[name] = candidate
                break
        else:
            no_image.append(name)
    if no_label:
        raise IOError(_missing_message(
            no_label, "labels are", "Each listed image needs SegmentationClass/<name>.png "
            "in --voc-dir or cls/<name>.mat in --sbd-dir; check that both downloads "
            "were extracted completely."))
    if no_image:
        raise IOError(_missing_message(
            no_image, "photos are", "Each listed image needs JPEGImages/<name>.jpg in "
            "--voc-dir or img/<name>.jpg in --sbd-dir."))
    return labels, images


def _link_or_copy(src, dst):
    """Hard-link ``src`` to ``dst`` (no extra space); copy across filesystems.

    Returns 'linked' or 'copied'.
    """
    try:
        os.link(src, dst)
        return "linked"
    except OSError:
        atomic_write(lambda tmp: shutil.copyfile(src, tmp), dst)
        return "copied"


def build_voc_aug(voc_dir, sbd_dir, output_dir=None, force=False,
                  num_classes=NUM_CLASSES, progress_interval=5.0):
    """Write SegmentationClassAug/, missing photos and the two list files.

    The layout, the splits, that every listed image has a label and a
    photo, and that no other list file would be replaced are checked before
    anything is written. Existing label PNGs
    are kept (a re-run after an interruption resumes) unless ``force``;
    photos are never overwritten.

    Args:
      voc_dir: VOCdevkit/VOC2012.
      sbd_dir: SBD's benchmark_RELEASE/dataset.
      output_dir: root of the written dataset (default ``voc_dir``). When it
        is not ``voc_dir``, every listed photo is linked into
        ``output_dir/JPEGImages`` so that it is a complete ``--data-dir``.
      force: rewrite existing labels and list files that differ.
    Returns:
      Counter with 'train' and 'val' (list lengths), 'labels_voc' and
      'labels_sbd' (labels written from each source), 'labels_kept'
      (already present, left alone), 'images_linked', 'images_copied',
      'lists_written'.
    Raises:
      IOError: a directory lacks the expected layout, a listed image has no
        label or photo, or a list file would be overwritten without ``force``.
      ValueError: a label file is malformed or does not fit its photo.
    """
    check_voc_dir(voc_dir)
    check_sbd_dir(sbd_dir)
    output_dir = voc_dir if output_dir is None else output_dir
    train, val = _splits(voc_dir, sbd_dir)
    names = sorted(set(train) | set(val))
    labels, images = plan_sources(names, voc_dir, sbd_dir)
    lists = [(os.path.join(output_dir, TRAIN_LIST), list_text(train)),
             (os.path.join(output_dir, VAL_LIST), list_text(val))]
    for path, text in lists:
        text_needs_writing(path, text, force)
    log.info("train_aug: %d images, val: %d; %d labels from VOC, %d from SBD",
             len(train), len(val), sum(s.kind == "voc" for s in labels.values()),
             sum(s.kind == "sbd" for s in labels.values()))

    label_dir = os.path.join(output_dir, LABEL_DIR)
    image_dir = os.path.join(output_dir, IMAGE_DIR)
    os.makedirs(label_dir, exist_ok=True)
    os.makedirs(image_dir, exist_ok=True)
    counts = collections.Counter(train=len(train), val=len(val))
    for name in logged_progress(names, "labels", log, interval=progress_interval):
        counts.update(_write_pair(os.path.join(image_dir, name + ".jpg"), images[name],
                                  os.path.join(label_dir, name + ".png"), labels[name],
                                  force, num_classes))
    for path, text in lists:
        counts["lists_written"] += write_text(path, text, force)
    return counts


def _splits(voc_dir, sbd_dir):
    """(train_aug names, val names) from VOC's and SBD's split files."""
    voc_sets = os.path.join(voc_dir, "ImageSets", "Segmentation")
    return plan_splits(read_split(os.path.join(voc_sets, "train.txt")),
                       read_split(os.path.join(voc_sets, "val.txt")),
                       read_split(os.path.join(sbd_dir, "train.txt")),
                       read_split(os.path.join(sbd_dir, "val.txt")))


def _write_pair(image_path, image_source, label_path, source, force, num_classes):
    """Link or copy one photo in if missing, write its label PNG unless kept.

    Returns:
      the ``build_voc_aug`` count keys this pair adds one to.
    """
    done = []
    if not os.path.exists(image_path):
        done.append("images_" + _link_or_copy(image_source, image_path))
    if os.path.exists(label_path) and not force:
        return done + ["labels_kept"]
    read = label_files.load_label if source.kind == "voc" else read_sbd_label
    label = label_checks.check_label(
        read(source.path), source.path, num_classes, IGNORE_LABEL,
        image_shape=label_files.image_size(image_path), image_path=image_path)
    save_label(label, label_path)
    return done + ["labels_" + source.kind]
