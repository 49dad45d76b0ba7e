"""A fake VOC2012 + SBD download: the few names of each split, their photos and labels."""
import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image

from deeplab_resnet import constants, files

# The fake download: which names are in which split, and of which size.
VOC_TRAIN = ["2007_000001", "2007_000002"]
VOC_VAL = ["2007_000003", "2007_000004"]
SBD_TRAIN = ["2007_000002", "2007_000003", "2008_000005", "2008_000006"]
SBD_VAL = ["2008_000007", "2007_000004", "2008_000005"]
SBD_ONLY_PHOTO = "2008_000007"  # in SBD's img/ but not in VOC's JPEGImages/
# (SBD train + SBD val + VOC train) - VOC val, sorted.
EXPECTED_TRAIN = ["2007_000001", "2007_000002", "2008_000005", "2008_000006",
                  "2008_000007"]


def read_png(path):
    with Image.open(path) as image:
        return image.mode, image.getpalette(), np.array(image)


def write_sbd_mat(path, label):
    """A cls/*.mat laid out like SBD's: 1x1 struct GTcls with Segmentation,
    Boundaries (20x1 cell of sparse maps) and CategoriesPresent."""
    boundaries = np.empty((20, 1), dtype=object)
    for i in range(20):
        boundaries[i, 0] = scipy.sparse.csc_matrix(
            (label == i + 1).astype(np.uint8))
    present = np.unique(label[(label > 0) & (label < 21)]).astype(np.uint8)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": label.astype(np.uint8),
                                      "Boundaries": boundaries,
                                      "CategoriesPresent": present.reshape(-1, 1)}})


def fake_label(rng, size, cls, border):
    label = np.zeros(size, np.uint8)
    label[size[0] // 4:size[0] // 2, size[1] // 3:] = cls
    if border:
        label[size[0] // 4 - 1, :] = constants.IGNORE_LABEL
    return label


def write_fake_download(tmp_path):
    """A tiny VOCdevkit/VOC2012 and benchmark_RELEASE/dataset in ``tmp_path``
    (conftest's ``fake_download`` fixture).

    Returns (voc_dir, sbd_dir, voc_labels, sbd_labels): label arrays by name.
    """
    rng = np.random.RandomState(0)
    voc_dir = tmp_path / "VOCdevkit" / "VOC2012"
    sbd_dir = tmp_path / "benchmark_RELEASE" / "dataset"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc_dir / sub).mkdir(parents=True)
    for sub in ("cls", "img", "inst"):
        (sbd_dir / sub).mkdir(parents=True)
    names = sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))
    sizes = {name: (20 + i, 31 - 2 * i) for i, name in enumerate(names)}
    voc_labels, sbd_labels = {}, {}
    for i, name in enumerate(names):
        photo = Image.fromarray(rng.randint(0, 256, sizes[name] + (3,)).astype(np.uint8))
        if name != SBD_ONLY_PHOTO:
            photo.save(str(voc_dir / "JPEGImages" / (name + ".jpg")))
        if name in SBD_TRAIN + SBD_VAL:
            photo.save(str(sbd_dir / "img" / (name + ".jpg")))
            sbd_labels[name] = fake_label(rng, sizes[name], 1 + i, border=False)
            write_sbd_mat(str(sbd_dir / "cls" / (name + ".mat")), sbd_labels[name])
        if name in VOC_TRAIN + VOC_VAL:
            # Another class than SBD's, so the test can tell whose label won.
            voc_labels[name] = fake_label(rng, sizes[name], 11 + i, border=True)
            files.save_label(voc_labels[name],
                             str(voc_dir / "SegmentationClass" / (name + ".png")))
    splits = {voc_dir / "ImageSets/Segmentation/train.txt": VOC_TRAIN,
              voc_dir / "ImageSets/Segmentation/val.txt": VOC_VAL,
              sbd_dir / "train.txt": SBD_TRAIN, sbd_dir / "val.txt": SBD_VAL}
    for path, split in splits.items():
        path.write_text("".join(n + "\n" for n in split))
    return str(voc_dir), str(sbd_dir), voc_labels, sbd_labels


def expected_lines(names):
    return ["/JPEGImages/%s.jpg /SegmentationClassAug/%s.png" % (n, n) for n in names]
