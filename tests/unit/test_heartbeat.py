"""The hang watcher's judgement (``cluster.runtime.heartbeat``) on heartbeat files written by hand, with a clock the
test moves; and the bad-node bookkeeping (``cluster.bad_nodes``)."""

import json

import pytest

from cluster.bad_nodes import NoNodesLeftError, check_fit, fewest_nodes, remember, remembered
from cluster.rundir import EventLog, read_events
from cluster.runtime.heartbeat import EXITED, SETUP, TRAINING, Heartbeat, Watch, beat_path
from jobs.user_errors import config_key

RUN = "123/0"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(folder, rank, *, beat, step=0, phase=TRAINING, run=RUN, host=None):
    folder.mkdir(exist_ok=True)
    beat_path(folder, rank).write_text(json.dumps({"rank": rank, "host": host or f"node{rank + 1}", "pid": 1,
                                                   "beat": beat, "step": step, "phase": phase, "run": run}))


def test_a_rank_whose_beats_stop_is_named_silent_once_the_timeout_has_passed(tmp_path):
    clock = Clock()
    watch = Watch(tmp_path, ranks=[0, 1], run=RUN, timeout_s=20, clock=clock)
    for second in range(30):  # rank 1 beats for 5 s, then never again; rank 0 beats on
        write(tmp_path, 0, beat=second, step=second)
        if second < 5:
            write(tmp_path, 1, beat=second, step=second)
        verdict = watch.check()
        if clock.now - 1000 <= 24:
            assert verdict is None, (clock.now, verdict)
        clock.now += 1
    assert verdict is not None and verdict.kind == "silent" and verdict.ranks == (1,) and verdict.hosts == ("node2",)
    assert verdict.describe().startswith("rank 1 on node2 sent no heartbeat for 2")


def test_a_rank_that_left_on_purpose_or_a_file_of_an_earlier_run_is_no_hang(tmp_path):
    clock = Clock()
    watch = Watch(tmp_path, ranks=[0, 1], run=RUN, timeout_s=20, clock=clock)
    write(tmp_path, 1, beat=1, phase=EXITED)
    for second in range(60):
        write(tmp_path, 0, beat=second, step=second)
        assert watch.check() is None
        clock.now += 1
    stale = Watch(tmp_path, ranks=[0], run="123/1", timeout_s=20, clock=clock)  # the files say run 123/0
    stale.check()
    clock.now += 21
    verdict = stale.check()
    assert verdict is not None and verdict.kind == "silent" and verdict.hosts == ("?",)  # never beat in this run


def test_beating_ranks_whose_steps_stop_are_a_stall_and_the_one_behind_is_named(tmp_path):
    clock = Clock()
    watch = Watch(tmp_path, ranks=[0, 1, 2], run=RUN, timeout_s=20, clock=clock)
    verdict = None
    for second in range(40):
        for rank in range(3):  # every rank beats; rank 2 stays at step 7, the others wait for it at 8
            write(tmp_path, rank, beat=second, step=min(second, 7 if rank == 2 else 8))
        verdict = watch.check()
        if second <= 27:
            assert verdict is None, (second, verdict)
        clock.now += 1
    assert verdict is not None and verdict.kind == "stalled" and verdict.ranks == (2,) and verdict.step == 7


def test_no_stall_is_judged_while_a_rank_sets_up_or_is_busy(tmp_path):
    clock = Clock()
    watch = Watch(tmp_path, ranks=[0, 1], run=RUN, timeout_s=20, clock=clock)
    for second in range(100):  # a long first step (compilation, loading) beats in the setup phase
        write(tmp_path, 0, beat=second, phase=SETUP)
        write(tmp_path, 1, beat=second, phase=TRAINING, step=3)
        assert watch.check() is None
        clock.now += 1


def test_a_heartbeat_thread_counts_up_and_its_last_beat_says_it_left(tmp_path):
    heart = Heartbeat(tmp_path, rank=3, run=RUN, interval_s=0.05).start()
    heart.step = 5
    import time

    time.sleep(0.3)
    heart.stop()
    record = json.loads(beat_path(tmp_path, 3).read_text())
    assert record["beat"] >= 4 and record["step"] == 5 and record["phase"] == EXITED and record["rank"] == 3


def test_bad_nodes_are_remembered_by_the_run_and_by_every_member_of_its_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "1").mkdir()
    (sweep / "manifest.json").write_text("{}")
    remember(sweep / "0", EventLog(sweep / "0", rank=0, job="5_0", restart=0), ["node3"], reason="hung")
    assert remembered(sweep / "0") == {"node3"} and remembered(sweep / "1") == {"node3"}
    assert [e["member"] for e in read_events(sweep)] == ["0"]
    assert remembered(tmp_path / "alone") == set()


def test_too_many_bad_nodes_for_the_job_is_refused_with_the_way_out():
    check_fit({"node1"}, partition="debug", partition_nodes=["node1", "node2", "node3"], needed=2)
    with pytest.raises(NoNodesLeftError) as refused:
        check_fit({"node1", "node2"}, partition="debug", partition_nodes=["node1", "node2", "node3"], needed=2)
    assert str(refused.value) == ("the job needs 2 node(s), and only 1 of partition debug's 3 are left once the nodes "
                                  "it found bad (node1,node2) are kept out; have them repaired, or run again with "
                                  "exclude_bad_nodes=false")
    assert refused.value.phrase(config_key).endswith("run again with requeue.exclude_bad_nodes=false")
    assert fewest_nodes("2-4") == 2 and fewest_nodes("3") == 3


def test_after_a_peer_failure_the_rank_that_stopped_beating_is_named_and_one_that_left_is_not(tmp_path):
    import time

    heart = Heartbeat(tmp_path, rank=0, run=RUN, interval_s=0.05).start()  # this rank, beating
    try:
        write(tmp_path, 1, beat=7, step=3)  # a rank that died: its file never changes again
        write(tmp_path, 2, beat=9, step=3, phase=EXITED)  # a rank that left on purpose
        began = time.monotonic()
        assert Watch(tmp_path, ranks=[0, 1, 2], run=RUN, timeout_s=20).silent_now(within_s=0.3, own_rank=0) == [1]
        assert 0.3 < time.monotonic() - began < 2
        write(tmp_path, 1, beat=8, step=3, phase=EXITED)
        began = time.monotonic()
        assert Watch(tmp_path, ranks=[0, 1, 2], run=RUN, timeout_s=20).silent_now(within_s=5, own_rank=0) == []
        assert time.monotonic() - began < 1  # everyone else left: nobody to wait for
    finally:
        heart.stop()


def test_a_rank_that_cannot_write_its_beats_judges_nobody_until_it_can(tmp_path):
    heart = Heartbeat(tmp_path, rank=0, run=RUN, interval_s=0.05)
    heart.write()
    assert not heart.failing
    heart.path = tmp_path / "gone" / "rank-00000"  # as a full or vanished file system: the write fails
    heart.write()
    assert heart.failing
    clock = Clock()
    watch = Watch(tmp_path, ranks=[0], run=RUN, timeout_s=20, clock=clock)
    watch.check()
    clock.now += 100  # no beat changed for 100 s, while nobody could write one
    watch.forget()  # what the watcher does while its own beats fail
    assert watch.check() is None
    clock.now += 21
    assert watch.check() is not None  # silent again, counted from when writing came back
