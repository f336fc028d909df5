"""All ranks agree at a step boundary on the warning flags (``cluster.warning_signals``) any of them got.

The loop asks ``StopVote.poll(step)`` at each step boundary; the vote is an all-reduce (MAX) of every
rank's flag, started at one boundary and read at the next vote, so it costs no waiting, and every
rank stops at the same step even when only one of them got the signal. The same vote carries whether a
rank's clock says a checkpoint is due (``save_wanted``), so a save by time happens at one step on all ranks.
"""

import time

import torch
import torch.distributed as dist

from cluster.warning_signals import StopFlag


class StopVote:
    """Every rank's flag, reduced without blocking at agreed step boundaries; the same answer on every rank.

    A vote at every step costs a fifth of a small model's step on CPU (one gloo collective, ~1 ms,
    against a 4-5 ms step; ``tests/bench/step_costs.py``), so the ranks vote about every ``interval_s``
    seconds instead: each vote also carries the gap, in steps, to the next one, the smallest any rank
    asks for from its own step time, so every rank votes at the same steps. A warning is acted on at
    most two intervals (and a step) after it came, far inside the lead time before the end.
    """

    def __init__(self, flag: StopFlag, device: torch.device, *, interval_s: float = 0.25):
        self.flag, self.interval_s = flag, interval_s
        self._value = torch.zeros(3, device=device)  # [any flag set, -(steps to the next vote), a save wanted]: MAX
        self.save_agreed = False  # whether the vote read at this step asks every rank to save
        self._work: dist.Work | None = None
        self._next_step: int | None = None  # None: vote at the next boundary (the first vote)
        self._voted_at: tuple[int, float] | None = None  # (step, time.monotonic()) of the last vote

    def poll(self, step: int, *, save_wanted: bool = False) -> bool:
        """True when some rank had its flag set at the previous vote (every rank gets the same answer);
        ``save_agreed`` then says whether some rank wanted a save at that vote (``save_wanted``).

        Every rank must call it at every step boundary, with the same ``step``.
        """
        self.save_agreed = False
        if self._next_step is not None and step < self._next_step:
            return False
        agreed, gap = False, 1
        if self._work is not None:
            self._work.wait()
            flag, minus_gap, save = self._value.tolist()
            agreed, gap, self.save_agreed = flag > 0, int(-minus_gap), save > 0
        now = time.monotonic()
        wanted = 1
        if self._voted_at is not None and step > self._voted_at[0]:
            step_s = (now - self._voted_at[1]) / (step - self._voted_at[0])
            wanted = max(1, int(self.interval_s / step_s)) if step_s > 0 else 1
        self._voted_at, self._next_step = (step, now), step + gap
        # A save agreed now resets the clocks that asked for it: their wish, taken before, is not carried on.
        save = save_wanted and not self.save_agreed
        self._value.copy_(torch.tensor([1.0 if self.flag.set else 0.0, -float(wanted), 1.0 if save else 0.0]))
        self._work = dist.all_reduce(self._value, op=dist.ReduceOp.MAX, async_op=True)
        return agreed

    def close(self) -> None:
        """Wait for the vote in flight: a collective must not outlive the loop."""
        if self._work is not None:
            self._work.wait()
            self._work = None
