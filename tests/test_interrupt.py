"""Ctrl-C/SIGTERM during training, as docs/distributed.md states it: the first asks
for a snapshot, a second after the step stops without one, and two within one step
(TensorFlow holding the main thread) count as one."""
import os
import signal
import threading
import time

import pytest
import tensorflow.compat.v1 as tf

from deeplab_resnet.training.loop import InterruptRequest


def test_a_second_signal_after_the_first_was_handled_stops_without_a_snapshot():
    with InterruptRequest() as interrupt:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)


def test_two_signals_while_a_step_runs_count_as_one():
    with tf.Graph().as_default():
        queue = tf.FIFOQueue(1, tf.float32)
        blocked = queue.dequeue()  # never fed: sess.run waits in C++ until its timeout
        options = tf.RunOptions(timeout_in_ms=1500)

        def send_two():
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGTERM)
        sender = threading.Thread(target=send_two)
        with tf.Session() as sess, InterruptRequest() as interrupt:
            sender.start()
            with pytest.raises(tf.errors.DeadlineExceededError):
                sess.run(blocked, options=options)
            sender.join()
            time.sleep(0.1)
            assert interrupt.requested  # one request, and no KeyboardInterrupt
