"""The collectives interface, written down once: what ``Local`` and ``Cluster`` both are.

The solver, the towers, the training loop and the evaluation talk to this
interface and never ask whether they run on one process or on many;
``collectives.connect`` is the one place that picks a side.
``tests/test_collectives.py`` checks that each side has every method here,
with the same parameters.
"""
from typing import Optional, Protocol, Sequence, Tuple


class Collectives(Protocol):
    """Sums, broadcasts and barriers over the workers of a run (or over one process).

    Graph builders return tensors or ops to run in ``session()``; build the
    same graph in the same order on every worker (collective keys are handed
    out in construction order).

    Attributes:
      index, num_workers: this worker's place (0 and 1 alone).
      is_chief: worker 0, or the one process: it alone writes snapshots.
      shard: (index, count): the rows ``index::count`` of a list it reads.
    """

    index: int
    num_workers: int
    is_chief: bool
    shard: Tuple[int, int]

    def session(self, graph=None):
        """A session on this worker (its server's, with several)."""

    def all_reduce(self, tensor, merge_op="Add", timeout=None):
        """``tensor`` summed ('Add') or maximised ('Max') over the workers."""

    def all_reduce_sum(self, tensors: Sequence):
        """Sums of ``tensors`` over the workers (a list, in order)."""

    def all_reduce_max(self, tensors: Sequence):
        """The largest of each of ``tensors`` over the workers."""

    def broadcast(self, variables: Sequence):
        """An op giving every worker the chief's values of ``variables``."""

    def barrier(self, name="barrier"):
        """An op that returns once every worker has run it."""

    def agreement(self, vector):
        """[2, n]: the largest of ``vector`` over the workers, and minus the smallest."""

    def join(self):
        """Wait until every worker has joined (a run with no other early collective)."""

    def sum_array(self, array):
        """A numpy array summed over the workers."""

    def stop_after_step(self, asked: bool, agreed: bool) -> bool:
        """Whether to stop after a step, the same answer on every worker.

        ``agreed``: the step's reduced interrupt flag (some worker asked
        before the step); ``asked``: this process asked during the step. A
        process may stop on ``asked`` only when it stops alone: with several
        workers the request waits for the next step's flag.
        """

    def watch_peers(self):
        """Every peer is up (the first collective completed): watch them."""

    def stop_watching(self):
        """The run is over: peers leaving are no longer lost."""

    def lost_peer(self, err) -> Optional[str]:
        """The message to stop on when the op error ``err`` of a training
        step may be a peer's (a collective failed), None when it can only be
        this process's own."""

    def describe_failure(self, err) -> str:
        """The one-line message for a failed collective or session run."""
