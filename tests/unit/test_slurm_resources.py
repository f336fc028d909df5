"""What one job asks Slurm for, refused before submitting when it cannot work."""

import pytest

from cluster.errors import SettingError
from cluster.slurm.resources import SlurmResources
from cluster.slurm.sbatch import check_setup


@pytest.mark.parametrize("timeout_min, lead_s", [(1, 120), (2, 120), (1, 60)])
def test_a_time_limit_within_the_warnings_lead_is_refused(timeout_min, lead_s):
    with pytest.raises(SettingError, match=f"^timeout_min={timeout_min} .* is not longer than the warning's lead "
                                           f"signal_lead_s={lead_s}: every allocation"):
        SlurmResources(timeout_min=timeout_min, signal_lead_s=lead_s)


def test_a_warning_due_within_slurms_resolution_is_told_not_refused():
    assert "Slurm may send it up to 60 s early" in SlurmResources(timeout_min=1, signal_lead_s=45).timing_warning()
    assert SlurmResources(timeout_min=3, signal_lead_s=120).timing_warning() == ""


@pytest.mark.parametrize("flag, instead", [("nodes", "set nodes instead"), ("time", "set timeout_min instead"),
                                           ("output", "the library sets it"), ("gres", "set gpus_per_node instead")])
def test_additional_flags_may_not_override_what_the_fields_set(flag, instead):
    with pytest.raises(SettingError, match=f"additional flag '{flag}' would override .*{instead}"):
        SlurmResources(additional=((flag, "2"),))
    SlurmResources(additional=(("mail-type", "END"),))


def test_setup_lines_must_parse_as_shell():
    check_setup(SlurmResources(setup=("module load cuda", "export X=1 && echo \"$X\"")))
    with pytest.raises(SettingError, match="setup is not valid shell .*unexpected EOF"):
        check_setup(SlurmResources(setup=("echo 'unbalanced",)))
