"""The benchmark's settings (one dataclass, from the flags) and its flag types.

No TensorFlow here: misc/benchmark.py parses its flags with these before it
loads anything heavy.
"""
import argparse
import collections
import dataclasses
import typing

# Training variants: name -> the fields of the Trainer's NetworkConfig it sets.
TRAIN_VARIANTS = collections.OrderedDict([
    ("fp32", {}),
    ("bf16", {"bf16": True}),
    ("msc", {"train_scales": (1.0, 0.75, 0.5)}),
    ("last-only", {"train_last_only": True}),
])


@dataclasses.dataclass
class Settings:
    """What to measure and how; misc/benchmark.py's flags of the same names."""
    parts: typing.Sequence[str]
    sizes: typing.Sequence[tuple] = ((321, 321), (513, 513))
    dtypes: typing.Sequence[str] = ("fp32", "bf16")
    num_classes: int = 21
    repeats: int = 5
    eval_images: int = 10
    train_batch: int = 10
    train_size: int = 321
    grad_update_every: int = 2
    train_variants: typing.Sequence[str] = ("fp32", "bf16")
    train_steps: int = 2
    crf_large_size: typing.Optional[tuple] = (1500, 2000)
    crf_eval_images: int = 10
    voc_sample: typing.Optional[str] = None
    trace_dir: typing.Optional[str] = None
    intra_op_threads: int = 0
    inter_op_threads: int = 0

    @classmethod
    def from_args(cls, args):
        """The settings of parsed flags (each field from the flag of its name)."""
        return cls(**{field.name: getattr(args, field.name)
                      for field in dataclasses.fields(cls)})


def parse_sizes(text):
    """'321,513' -> [(321, 321), (513, 513)]; '375x500' -> [(375, 500)]."""
    sizes = []
    for item in text.split(","):
        height, _, width = item.partition("x")
        try:
            sizes.append((int(height), int(width or height)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                "expected sizes such as 321,513 or 375x500; got %r" % text)
    return sizes


def parse_large_size(text):
    """'1500x2000' -> (1500, 2000); '0' -> None."""
    if text.strip() == "0":
        return None
    sizes = parse_sizes(text)
    if len(sizes) != 1:
        raise argparse.ArgumentTypeError("expected one size such as 1500x2000, or 0; "
                                         "got %r" % text)
    return sizes[0]
