import pytest

from cluster.slurm.hostlist import expand_hostlist


@pytest.mark.parametrize(
    "hostlist, expected",
    [
        ("node1", ["node1"]),
        ("node1,node2", ["node1", "node2"]),
        ("node[1-3]", ["node1", "node2", "node3"]),
        ("node[1-3,7]", ["node1", "node2", "node3", "node7"]),
        ("node[1-3,7],gpu-[01-04]", ["node1", "node2", "node3", "node7", "gpu-01", "gpu-02", "gpu-03", "gpu-04"]),
        ("gpu[008-011]", ["gpu008", "gpu009", "gpu010", "gpu011"]),
        ("n[9-11]", ["n9", "n10", "n11"]),
        ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
        ("a[1,3]b,c", ["a1b", "a3b", "c"]),
        ("node[5]", ["node5"]),
        ("x-1.cluster,y[2-3].cluster", ["x-1.cluster", "y2.cluster", "y3.cluster"]),
    ],
)
def test_expands_slurm_hostlists(hostlist, expected):
    assert expand_hostlist(hostlist) == expected


@pytest.mark.parametrize("bad", ["node[1-3", "node1-3]", "node[a-b]", "node[3-1]", "node1,,node2", "node[]"])
def test_malformed_hostlists_raise(bad):
    with pytest.raises(ValueError):
        expand_hostlist(bad)
