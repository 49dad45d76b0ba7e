"""The train part: a training step per variant, with its speed, FLOP rate and memory.

Each of --train-variants (fp32, bf16 mixed precision, MSC, classifier only)
runs train.py's graph (ResNet-101, frozen BatchNorm) at --train-batch on
random crops of --train-size, in a process of its own (spawned, so that its
peak memory, VmHWM, is its own, with train.py's kernels: deeplab_resnet.kernels); fp32 also split by --grad-update-every.
Reported per run: median s/step, s/image, the step's GFLOPs and GFLOP/s,
the forward pass's share (backward/forward), peak memory; then the bf16
speed-up over fp32 at each batch both ran, and the CPU with its native
bfloat16 support (AMX, AVX512_BF16 or none, from /proc/cpuinfo's flags),
without which TensorFlow emulates bfloat16 and bf16 cannot be faster.
"""
import logging

from deeplab_resnet import cli
from deeplab_resnet.runtime import session_config, tf
from deeplab_resnet.training import Trainer
from deeplab_resnet.training.config import NetworkConfig, SolverConfig
from misc.benchmarks.common import (GIB, cpu_info, cpu_name, in_fresh_process,
                                    median_seconds, peak_bytes, traced_run)
from misc.benchmarks.flops import graph_flops
from misc.benchmarks.options import TRAIN_VARIANTS

log = logging.getLogger("benchmark")

TRAIN_MEMORY_TARGET_GIB = 24.0
FLOP_COUNT = ("TensorFlow's per-op FLOP registry (tf.profiler's float_operation) summed "
              "over the ops one step runs: convolutions forward and both backprops, "
              "element-wise ops, the update; casts and copies count 0. Where this "
              "CPU differentiates dilated convolutions in their space-to-batch form "
              "(training/gradients.py), the zeros it pads with count too")


def variant_network(variant, num_classes):
    """The ``NetworkConfig`` a variant trains: ResNet-101 with its fields."""
    return NetworkConfig(num_classes=num_classes, **TRAIN_VARIANTS[variant])


def step_flops(trainer, graph):
    """(FLOPs of one ``trainer.step``, of its forward passes alone): the ops
    of each of its batches (forward, backward, the sums it reports) times
    --grad-update-every, plus the update's, each counted by
    ``flops.graph_flops`` on its subgraph."""
    reported = [t for _, loss_sum, num_valid in trainer.outputs
                for t in (loss_sum, num_valid)]
    reported += [trainer.num_correct, trainer.num_bad_labels, trainer.max_bad_label]
    update = [trainer.train_op, trainer.l2_loss, trainer.learning_rate]
    forward = trainer.grad_update_every * graph_flops(graph, [trainer.loss_sum])[0]
    if trainer.accumulate_op is None:
        return graph_flops(graph, reported + update)[0], forward
    return (trainer.grad_update_every
            * graph_flops(graph, reported + [trainer.accumulate_op])[0]
            + graph_flops(graph, update)[0]), forward


def train_worker(variant, batch, grad_update_every, size, num_classes, steps, threads,
                 trace_path, results):
    """One training configuration, in its own process: median s/step, the
    forward pass's s/step alone, the process's peak resident memory and the
    step's FLOPs (counted after the peak is read), put on ``results``; with
    ``trace_path``, one more step traced: its op time shares, and a Chrome
    trace written there."""
    cli.setup_logging()
    try:
        with tf.Graph().as_default() as graph:
            tf.set_random_seed(0)
            images = tf.random_uniform((batch,) + size + (3,), -120.0, 130.0)
            labels = tf.cast(tf.random_uniform((batch,) + size + (1,), 0, num_classes,
                                               dtype=tf.int32), tf.uint8)
            trainer = Trainer(images, labels, variant_network(variant, num_classes),
                              solver=SolverConfig(grad_update_every=grad_update_every))
            init = tf.group(tf.global_variables_initializer(),
                            tf.local_variables_initializer())
            with tf.Session(config=session_config(*threads)) as sess:
                sess.run(init)
                seconds = median_seconds(lambda: trainer.step(sess), steps)
                forward = grad_update_every * median_seconds(
                    lambda: sess.run(trainer.loss_sum.op), steps)
                result = {"seconds": seconds, "forward_seconds": forward,
                          "peak_bytes": peak_bytes()}
                if trace_path and grad_update_every == 1:
                    result["op_shares"] = traced_run(sess, trainer.train_op,
                                                     path=trace_path, top=6)
            result["step_flops"], result["forward_flops"] = step_flops(trainer, graph)
        results.put(result)
    except tf.errors.ResourceExhaustedError as err:
        results.put({"error": "out of memory: %s" % err.message.splitlines()[0]})


def train_step(run, variant, batch, grad_update_every):
    """``train_worker`` in a fresh process; its result with the run's
    figures derived (s/image, GFLOP/step and of its forward passes, GFLOP/s),
    or {'error': ...}."""
    settings = run.settings
    size = (settings.train_size, settings.train_size)
    result = in_fresh_process(
        train_worker, variant, batch, grad_update_every, size, settings.num_classes,
        settings.train_steps, run.threads,
        run.trace_path("train_%s_batch%d" % (variant, batch)), job="train")
    result.update(variant=variant, batch=batch, grad_update_every=grad_update_every)
    if "error" not in result:
        images = batch * grad_update_every
        result.update(seconds_per_image=result["seconds"] / images,
                      step_gflop=result["step_flops"] / 1e9,
                      forward_gflop=result["forward_flops"] / 1e9,
                      gflops=result["step_flops"] / 1e9 / result["seconds"])
    return result


def bf16_speedups(runs):
    """[{batch, fp32_seconds, bf16_seconds, speedup}] for each batch at which
    both fp32 and bf16 ran without accumulation."""
    seconds = {}
    for run in runs:
        if "error" not in run and run["grad_update_every"] == 1:
            seconds.setdefault((run["variant"], run["batch"]), run["seconds"])
    return [{"batch": batch, "fp32_seconds": seconds["fp32", batch],
             "bf16_seconds": bf16, "speedup": seconds["fp32", batch] / bf16}
            for (variant, batch), bf16 in seconds.items()
            if variant == "bf16" and ("fp32", batch) in seconds]


def measure(run):
    """Each --train-variants at --train-batch (fp32 first; if it fails, the
    largest batch that runs), then fp32 split by --grad-update-every."""
    settings = run.settings
    log.info("training steps (a process each)")
    runs = []
    for variant in settings.train_variants:
        runs.append(train_step(run, variant, settings.train_batch, 1))
        batch = settings.train_batch
        while variant == "fp32" and "error" in runs[-1] and batch > 1:
            batch //= 2
            log.info("batch %d failed (%s); trying %d", runs[-1]["batch"],
                     runs[-1]["error"], batch)
            runs.append(train_step(run, variant, batch, 1))
    k = settings.grad_update_every
    if k > 1:
        runs.append(train_step(run, "fp32", max(settings.train_batch // k, 1), k))
    return {"train": {"size": settings.train_size, "runs": runs, "cpu": cpu_info(),
                      "flop_count": FLOP_COUNT, "bf16_speedup": bf16_speedups(runs)}}


ROW = "%-10s %-6s %17s %8s %8s %10s %8s %16s %12s"


def lines(report):
    train = report.get("train")
    if not train:
        return []
    out = ["", "training step (ResNet-101 %dx%d, frozen BatchNorm, median; backward = "
           "step - forward)" % (train["size"], train["size"])]
    if "cpu" in train:
        out.append("CPU: %s; native bfloat16: %s" % (cpu_name(train["cpu"]),
                                                     train["cpu"]["bf16"]))
    out.append(ROW % ("variant", "batch", "grad-update-every", "s/step", "s/image",
                      "GFLOP/step", "GFLOP/s", "backward/forward", "peak memory"))
    for run in train["runs"]:
        head = (run["variant"], run["batch"], run["grad_update_every"])
        if "error" in run:
            out.append("%-10s %-6d %17d  %s" % (head + (run["error"],)))
            continue
        images, forward = run["batch"] * run["grad_update_every"], run["forward_seconds"]
        out.append(ROW % (head + (
            "%.2f" % run["seconds"], "%.2f" % (run["seconds"] / images),
            "%.1f" % run["step_gflop"] if "step_gflop" in run else "-",
            "%.1f" % run["gflops"] if "gflops" in run else "-",
            "%.2f" % ((run["seconds"] - forward) / forward),
            "%.1f GiB" % (run["peak_bytes"] / GIB))))
    for speedup in bf16_speedups(train["runs"]):
        out.append("training bf16 speed-up over fp32: %.2fx (batch %d)"
                   % (speedup["speedup"], speedup["batch"]))
    if "flop_count" in train:
        out.append("GFLOP/step: " + train["flop_count"])
    for run in train["runs"]:
        if run.get("op_shares"):
            out.append("where the time goes (%s, batch %d, traced step): %s" % (
                run["variant"], run["batch"], ", ".join(
                    "%s %.0f%%" % (k, 100 * v) for k, v in run["op_shares"].items())))
    return out


def targets(report):
    """The first run (--train-batch) fits in TRAIN_MEMORY_TARGET_GIB."""
    train = report.get("train")
    if not train:
        return []
    full = train["runs"][0]
    fits = [r for r in train["runs"] if "error" not in r and r["grad_update_every"] == 1
            and r["variant"] == full["variant"]]
    if "error" in full:
        text = "batch %d failed (%s); largest that ran: %s" % (
            full["batch"], full["error"], fits[0]["batch"] if fits else "none")
    else:
        text = "%.1f GiB" % (full["peak_bytes"] / GIB)
    return [("batch-%d %dx%d training step fits in %.0f GiB" % (
        full["batch"], train["size"], train["size"], TRAIN_MEMORY_TARGET_GIB), text,
        "error" not in full and full["peak_bytes"] / GIB <= TRAIN_MEMORY_TARGET_GIB)]
