"""``tomeray config JOB [key=value ...]``: print a job's resolved configuration as YAML."""

from __future__ import annotations

import argparse
import importlib

from omegaconf import OmegaConf
from tomeray.pipeline.core.config import config_to_dict, load_config
from tomeray.pipeline.core.runner import run_command

# job -> (module, schema class, configs/<name>.yaml)
JOBS = {
    "index": ("tomeray.pipeline.video.config", "IndexConfig", "index"),
    "search": ("tomeray.pipeline.video.config", "SearchConfig", "search"),
    "serve": ("tomeray.pipeline.video.serve.config", "ServeConfig", "serve"),
    "scenes": ("tomeray.pipeline.service.config", "ScenesConfig", "scenes"),
    "reconstruct": ("tomeray.pipeline.reconstruction.config", "ReconConfig", "reconstruct"),
    "train": ("tomeray.pipeline.training.config", "TrainConfig", "train"),
    "eval-retrieval": ("tomeray.pipeline.training.config", "EvalConfig", "eval_retrieval"),
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tomeray config", description=__doc__)
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    module, schema, yaml_name = JOBS[args.job]

    def body() -> int:
        cfg = load_config(getattr(importlib.import_module(module), schema), yaml_name, args.overrides)
        print(OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg))), end="")
        return 0

    return run_command("tomeray config", body)
