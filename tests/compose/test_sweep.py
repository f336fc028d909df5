"""Sweep records, Slurm state parsing and the CLI on run directories written by hand (no Slurm needed)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from cluster.cli import main
from cluster.slurm.commands import expand_array_ids, parse_states
from cluster.sweep.manifest import Manifest, Member, array_chunks, find_manifest
from cluster.sweep.status import from_run_dir
from tests.helpers import REPO


def test_arrays_are_cut_below_max_array_size():
    assert array_chunks(300, 128) == [range(0, 128), range(128, 256), range(256, 300)]
    assert array_chunks(12, 1001) == [range(0, 12)]
    with pytest.raises(ValueError, match="MaxArraySize 0"):
        array_chunks(3, 0)


def test_sacct_and_squeue_lines_become_one_state_per_task():
    sacct = ("145_0|COMPLETED|00:00:07\n145_[3-5,9%4]|PENDING|00:00:00\n145_1|CANCELLED by 0|00:00:02\n"
             "146|FAILED|00:01:00\n")
    states = parse_states(sacct)
    assert states["145_0"] == ("COMPLETED", "00:00:07") and states["145_1"][0] == "CANCELLED"
    assert [k for k in states if states[k][0] == "PENDING"] == ["145_3", "145_4", "145_5", "145_9"]
    assert states["146"] == ("FAILED", "00:01:00")
    assert expand_array_ids("77") == ["77"]


def write_run(run_dir: Path, *, losses: list[float], summary: bool, failed: str | None = None) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": 10 * (i + 1), "loss": loss}) + "\n"
                                                   for i, loss in enumerate(losses)))
    events = [{"event": "started", "restart": 0}]
    if failed:
        events.append({"event": "failed", "kind": "final", "reason": f"job ends: {failed}"})
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if summary:
        (run_dir / "summary.json").write_text(json.dumps({"final_loss": losses[-1], "steps": 10 * len(losses),
                                                          "samples_per_s": 1000.0, "param_digest": "ab"}))


@pytest.fixture
def sweep(tmp_path) -> Manifest:
    members = []
    cases = [("0.1", [2.0, 1.0], True, None), ("0.3", [2.0, 0.5], True, None),
             ("9", [2.0, float("nan")], False, "the loss is nan")]
    for index, (lr, losses, done, failed) in enumerate(cases):
        run_dir = tmp_path / str(index)
        write_run(run_dir, losses=losses, summary=done, failed=failed)
        members.append(Member(index=index, overrides=["cluster=slurm", f"optim.lr={lr}"], run_dir=str(run_dir),
                              steps=20, job_id="", task_id=index))
    manifest = Manifest(sweep_dir=str(tmp_path), kind="slurm", created_at="2026-01-01T00:00:00", members=members)
    manifest.write()
    return manifest


def test_the_manifest_survives_a_retry_and_is_found_from_a_member(sweep):
    member = sweep.members[2]
    member.submitted("41_2")
    member.submitted("57")  # an array of one is a plain job
    sweep.write()
    again = find_manifest(Path(member.run_dir))
    assert again.members[2].slurm_id == "57" and again.members[2].attempts[0]["job_id"] == "41"
    assert not list(Path(sweep.sweep_dir).glob(".manifest.json.*"))  # written through a renamed temporary


def test_run_directories_tell_the_state_when_slurm_cannot(sweep):
    assert [from_run_dir(Path(m.run_dir)) for m in sweep.members] == ["COMPLETED", "COMPLETED", "FAILED"]


def test_collect_writes_the_table_csv_and_plot_and_names_the_best(sweep, capsys):
    assert main(["collect", sweep.sweep_dir]) == 0
    out = capsys.readouterr().out
    assert "best by final_loss (min): member 1 (optim.lr=0.3)" in out and "no summary yet for member(s) 2" in out
    rows = (Path(sweep.sweep_dir) / "results.csv").read_text().splitlines()
    assert rows[0].startswith("member,overrides,steps,final_loss") and len(rows) == 3
    png = (Path(sweep.sweep_dir) / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_collect_and_status_show_the_validation_loss_and_collect_picks_by_it(sweep, capsys):
    for member, (final, val) in zip(sweep.members[:2], ((1.0, 0.7), (0.5, 0.9)), strict=True):
        run_dir = Path(member.run_dir)  # member 1 trains best, member 0 generalizes best
        records = [{"step": 10, "loss": 2.0, "val_loss": 2.1}, {"step": 20, "loss": final, "val_loss": val}]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        summary = json.loads((run_dir / "summary.json").read_text())
        (run_dir / "summary.json").write_text(json.dumps({**summary, "final_loss": final, "val_loss": val}))
    assert main(["collect", sweep.sweep_dir, "--metric", "val_loss"]) == 0
    out = capsys.readouterr().out
    assert "best by val_loss (min): member 0 (optim.lr=0.1), val_loss = 0.7" in out, out
    assert "val_loss" in out.splitlines()[0] and "0.7000" in out.splitlines()[1]
    assert main(["status", sweep.sweep_dir, "--json"]) in (0, 1, 3)
    assert [m["val_loss"] for m in json.loads(capsys.readouterr().out)["members"]] == [0.7, 0.9, None]
    main(["status", sweep.sweep_dir])
    table = capsys.readouterr().out.splitlines()[1:]  # after the summary line
    assert table[0].split()[:6] == ["member", "state", "restarts", "step", "loss", "val_loss"]
    assert table[1].split()[5] == "0.7000" and table[3].split()[5] == "-"


@pytest.mark.parametrize("argv, message", [
    (["status", "/nonexistent/sweep"], "does not exist; give the sweep directory"),
    (["status", "/"], "is no sweep directory: it has no manifest.json"),
])
def test_a_wrong_path_says_what_was_expected(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_member_is_refused(sweep, capsys):
    assert main(["logs", sweep.sweep_dir, "7"]) == 2
    assert "no member 7" in capsys.readouterr().err


@pytest.fixture(scope="module")
def composer_and_hydra(tmp_path_factory):
    """The launcher's composer, and what Hydra's own launchers compose for a member (load_sweep_config)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from hydra_plugins.clusterjobs_launcher.clusterjobs_launcher import MemberComposer

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(REPO / "conf")))
    config = loader.load_configuration("train", overrides=[f"hydra.sweep.dir={tmp_path_factory.mktemp('sweep')}"],
                                       run_mode=RunMode.MULTIRUN)

    def hydras(overrides: list[str]) -> dict:
        composed = loader.load_sweep_config(config, overrides)
        return OmegaConf.to_container(OmegaConf.masked_copy(composed, [k for k in composed if k != "hydra"]),
                                      resolve=True)

    return MemberComposer(config, SimpleNamespace(config_loader=loader)), hydras


@pytest.mark.parametrize("overrides", [
    ["train.seed=3"], ["train.seed=4"], ["train.seed=-12"], ["optim.lr=1e-3"], ["optim.lr=.5"], ["optim.lr=5."],
    ["train.seed='12'"], ["train.seed=007"], ["train.seed=1_000"], ["optim.lr=inf"],
    ["data=mnist", "data.download=true"],
    ["model=cnn", "optim.lr=0.1"], ["model=cnn", "optim.lr=0.2", "train.seed=5"],
    ["cluster=slurm", "cluster.partition=high", "cluster.timeout_min=7"],
    ["+train.note=hello"], ["train.seed=5", "+train.same_seed=${train.seed}"],
    ["optim=adamw", "optim.betas=[0.8,0.9]", "optim.lr=3e-4"], ["optim=adamw", "optim.betas=[0.8,0.9]"],
    ["optim.lr=1"], ["data.noise=2"], ["train.async_checkpoint=false"],
])
def test_a_members_config_is_what_hydras_own_launchers_compose(composer_and_hydra, overrides):
    composer, hydras = composer_and_hydra
    composer.member(0, ["train.seed=0", "optim.lr=0.1"])  # numbers of these keys are read without the parser
    tree, run_dir = composer.member(7, overrides)
    assert tree == hydras(overrides) and run_dir.name == "7"
    assert all(type(a) is type(b) for a, b in zip(_leaves(tree), _leaves(hydras(overrides))))
    assert composer.composed[()].plain is not None, "the default groups hold no interpolation: the plain path"


def _leaves(tree):
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
    return [leaf for item in tree for leaf in _leaves(item)] if isinstance(tree, list) else [tree]


@pytest.mark.parametrize("overrides", [["strategy.pp=null"], ["train.seed=abc"], ["optim.lr=[1,2]"],
                                       ["~optim.weight_decay"]])
def test_a_member_the_schema_refuses_is_refused_as_hydra_refuses_it(composer_and_hydra, overrides):
    """Values written into the plain copy go through the same node conversion a composition does."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    composer, hydras = composer_and_hydra
    with pytest.raises((HydraException, OmegaConfBaseException)):
        hydras(overrides)
    with pytest.raises((HydraException, OmegaConfBaseException)):
        composer.member(3, overrides)


def test_an_addition_every_member_has_is_composed_once_with_the_groups(composer_and_hydra):
    """``+cluster.additional.begin=...`` on every member: composed with the groups once (Hydra's own code), the
    members' values then set by value, where a copy of the composition per member cost 23 s for 10,000."""
    from hydra_plugins.clusterjobs_launcher.clusterjobs_launcher import MemberComposer

    plain, hydras = composer_and_hydra
    shared = ["cluster=slurm", "+cluster.additional.begin=now+1hour", "+train.tag=sweep7"]
    composer = MemberComposer(plain.config, SimpleNamespace(config_loader=plain.loader), shared=set(shared))
    for seed, own in enumerate(["optim.lr=1", "+train.note=hers", "+train.note=his"]):  # by value; a copy each
        overrides = [*shared, f"train.seed={seed}", own]
        tree, _ = composer.member(seed, overrides)
        assert tree == hydras(overrides)
    assert list(composer.composed) == [tuple(shared)]  # one composition for the three members
