"""The merge-mode strings of jobs/bench_vggt.py (PRESET[+KEY=VALUE...])."""

from __future__ import annotations

import pytest
from tomeray.jobs.bench_vggt import merge_config
from tomeray.models.errors import ConfigError


def test_bench_vggt_mode_strings_resolve_to_merge_options():
    options = merge_config("reference+proportional_attention=true+region=3", 0.8, 1).options()
    assert options["proportional_attention"] is True and options["region"] == 3
    picked = (options["preset"], options["seed"], options["ratio"], options["start_block"])
    assert picked == ("reference", 33, 0.8, 1)
    fast = merge_config("default+candidates=local+rematch_every=2", 0.9, 0).options()
    assert (fast["candidates"], fast["rematch_every"], fast["seed"]) == ("local", 2, 0)


@pytest.mark.parametrize(
    "mode, message",
    [("quick", "preset"), ("default+speed=2", "not KEY=VALUE"), ("default+region", "not KEY=VALUE"),
     ("fast+candidates=near", "merge.candidates"), ("default+region=-1", "merge.region")],
)
def test_bench_vggt_bad_mode_strings_raise_config_error(mode, message):
    with pytest.raises(ConfigError, match=message):
        merge_config(mode, 0.9, 0)
