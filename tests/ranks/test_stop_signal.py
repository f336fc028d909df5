"""The stop vote: a warning that reaches one rank stops every rank at the same step, soon, without a
collective at every step."""

import json
import os
import signal
import time
from pathlib import Path

import torch

from cluster.runtime import stop_vote
from cluster.runtime.stop_vote import StopVote
from cluster.warning_signals import StopFlag
from tests.gloo_ranks import spawn_gloo_ranks

# A busy machine stretches a 2 ms step to ~10 ms: still ~10 steps between votes, twice the margin asked below.
STEP_S, INTERVAL_S, SIGNAL_AT, STEPS = 0.002, 0.1, 200, 1000


def _vote(rank: int, out: str, interval_s: float) -> None:
    collectives = []
    all_reduce = stop_vote.dist.all_reduce
    stop_vote.dist.all_reduce = lambda *args, **kwargs: collectives.append(1) or all_reduce(*args, **kwargs)
    flag = StopFlag(("USR2",)).install()
    vote = StopVote(flag, torch.device("cpu"), interval_s=interval_s)
    stopped, signalled_at, began = None, None, time.monotonic()
    for step in range(1, STEPS + 1):
        time.sleep(STEP_S)  # a training step
        if step == SIGNAL_AT:
            signalled_at = time.time()  # both ranks get here about together: they have voted all along
            if rank == 1:
                os.kill(os.getpid(), signal.SIGUSR2)  # only rank 1 is warned
        if vote.poll(step):
            stopped = step
            break
    vote.close()
    flag.uninstall()
    Path(out, f"{rank}.json").write_text(json.dumps({
        "stopped": stopped, "collectives": len(collectives), "after_s": time.time() - signalled_at,
        "ran_s": time.monotonic() - began}))


def test_a_warning_to_one_rank_stops_all_at_the_same_step_with_few_collectives(tmp_path):
    spawn_gloo_ranks(_vote, str(tmp_path), INTERVAL_S, world_size=2)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["stopped"] == ranks[1]["stopped"] is not None, ranks
    # Votes come about every INTERVAL_S; a step takes at least STEP_S, so the warning is acted on
    # within two gaps of at most INTERVAL_S / STEP_S steps.
    assert SIGNAL_AT < ranks[0]["stopped"] <= SIGNAL_AT + 2 * INTERVAL_S / STEP_S + 1
    # A vote about every INTERVAL_S (the first ones a step apart, to measure the step), not one every few steps:
    # counted against the time the loop ran, about 0.5 s.
    assert ranks[0]["collectives"] <= 1.5 * ranks[0]["ran_s"] / INTERVAL_S + 3, ranks


def test_with_the_default_interval_every_rank_stops_within_about_half_a_second_of_the_warning(tmp_path):
    default = StopVote.__init__.__kwdefaults__["interval_s"]
    spawn_gloo_ranks(_vote, str(tmp_path), default, world_size=2)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["stopped"] == ranks[1]["stopped"] is not None, ranks
    # two gaps between votes at most (the flag is read at one vote, agreed at the next), and room for a busy machine
    assert max(rank["after_s"] for rank in ranks) <= 2 * default + 0.25, ranks


def _save_vote(rank: int, out: str) -> None:
    vote = StopVote(StopFlag(("USR2",)), torch.device("cpu"), interval_s=INTERVAL_S)
    saves: list[int] = []
    started = time.monotonic()
    for step in range(1, 400):
        time.sleep(STEP_S * (1 + rank))  # rank 1 runs slower: the clocks of the ranks disagree on any step
        # Only rank 1's clock asks, from 0.1 s on (a slow rank's clock, say); as Job does, until it saved.
        wanted = rank == 1 and time.monotonic() - started > 0.1 and not saves
        vote.poll(step, save_wanted=wanted)
        if vote.save_agreed:
            saves.append(step)
    vote.close()
    Path(out, f"{rank}.json").write_text(json.dumps({"saves": saves}))


def test_a_save_one_ranks_clock_asks_for_happens_at_the_same_step_on_every_rank(tmp_path):
    """checkpoint_every_min: the ranks' clocks differ, so the save rides on the stop vote (cluster.Job)."""
    spawn_gloo_ranks(_save_vote, str(tmp_path), world_size=2)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["saves"] == ranks[1]["saves"] and len(ranks[0]["saves"]) == 1, ranks  # once: the clock reset
