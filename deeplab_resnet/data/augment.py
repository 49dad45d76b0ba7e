"""Training augmentation of image/label pairs: random scale, mirror, and crop with padding.

Training adds a random scale in [0.5, 1.5] (bilinear with half-pixel centres
for the image, as OpenCV's INTER_LINEAR; nearest for the label, which must
never mix class ids), a random left-right mirror, and a random crop to the
input size; images smaller than the crop are first padded at the bottom and
right with the mean (0 after subtraction) and their labels with the ignore
label, so padding adds neither signal nor loss.
"""
from deeplab_resnet.constants import IGNORE_LABEL
from deeplab_resnet.runtime import tf


def image_scaling(image, label, min_scale=0.5, max_scale=1.5, scale_set=None):
    """Rescale image and label by one random factor.

    Args:
      image: float32 [H, W, C]; label: [H, W, 1].
      min_scale, max_scale: the factor is uniform in [min_scale, max_scale)
        (the original TensorFlow port's --random-scale)...
      scale_set: ... unless these factors are given: one of them, each as
        likely (Caffe DeepLab-v2's {0.5, 0.75, 1, 1.25, 1.5}).
    Returns:
      (image, label) at the new size; the label by nearest neighbour (OpenCV's
      INTER_NEAREST sampling), so it only ever holds values it had.
    """
    if scale_set:
        choices = tf.constant(list(scale_set), tf.float32)
        scale = tf.gather(choices, tf.random_uniform([], 0, len(scale_set), tf.int32))
    else:
        scale = tf.random_uniform([], min_scale, max_scale)
    size = tf.cast(tf.shape(image)[:2], tf.float32) * scale
    size = tf.maximum(tf.cast(tf.round(size), tf.int32), 1)
    image = tf.image.resize_bilinear(image[None], size, half_pixel_centers=True)[0]
    label = tf.image.resize_nearest_neighbor(label[None], size)[0]
    return image, label


def image_mirroring(image, label):
    """Flip image and label left-right together, with probability 1/2."""
    flip = tf.random_uniform([]) < 0.5
    return (tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image),
            tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label))


def random_crop_and_pad_image_and_labels(image, label, crop_h, crop_w,
                                         ignore_label=IGNORE_LABEL):
    """One random ``crop_h`` x ``crop_w`` window of image and label together.

    Sides shorter than the crop are padded at the bottom/right first: the
    image with 0 (the mean, once it is subtracted), the label with
    ``ignore_label``. Image and label are stacked so one crop cuts both.

    Args:
      image: float32 [H, W, 3], mean subtracted; label: integer [H, W, 1].
    Returns:
      (image float32 [crop_h, crop_w, 3], label uint8 [crop_h, crop_w, 1]).
    """
    # Shift the label so that zero padding becomes the ignore label.
    label = tf.cast(label, tf.float32) - ignore_label
    combined = tf.concat([image, label], axis=2)
    shape = tf.shape(image)
    combined = tf.image.pad_to_bounding_box(combined, 0, 0,
                                            tf.maximum(crop_h, shape[0]),
                                            tf.maximum(crop_w, shape[1]))
    crop = tf.random_crop(combined, [crop_h, crop_w, 4])
    image = crop[:, :, :3]
    label = tf.cast(tf.round(crop[:, :, 3:] + ignore_label), tf.uint8)
    image.set_shape([crop_h, crop_w, 3])
    label.set_shape([crop_h, crop_w, 1])
    return image, label
