"""``tomeray config JOB [key=value ...]``: print a job's resolved configuration as YAML."""

from __future__ import annotations

import argparse
import importlib

from omegaconf import OmegaConf
from tomeray.models.errors import TomerayError
from tomeray.pipeline.config import config_to_dict, load_config

# job -> (module, schema class, configs/<name>.yaml)
JOBS = {
    "index": ("tomeray.pipeline.video_index", "IndexConfig", "index"),
    "reconstruct": ("tomeray.pipeline.reconstruct", "ReconConfig", "reconstruct"),
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tomeray config", description=__doc__)
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    module, schema, yaml_name = JOBS[args.job]
    try:
        cfg = load_config(getattr(importlib.import_module(module), schema), yaml_name, args.overrides)
    except TomerayError as e:
        print(f"tomeray config: {e}")
        return 2
    print(OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg))), end="")
    return 0
