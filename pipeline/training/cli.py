"""``tomeray train`` (and ``python -m tomeray.jobs.train_tempme``): arguments, summary, exit status."""

from __future__ import annotations

from tomeray.models.errors import InputError
from tomeray.pipeline.core.runner import job_parser, print_report, run_job_command
from tomeray.pipeline.training.job import TrainSummary, run_train

__all__ = ["main", "print_summary"]


def _parser():
    return job_parser(
        "tomeray train",
        "Fine-tune TempMe's trainable parts (LoRA in both towers + temporal embeddings, ~0.5M parameters) "
        "on video-caption pairs with Ray Train (resumable: rerun the same command to continue).",
        "Examples:\n"
        "  tomeray train pairs.csv --out runs/ft\n"
        "  tomeray train /data/msrvtt --out runs/msrvtt train.workers=4\n"
        "  tomeray index videos/ --out idx model.adapter=runs/ft/adapter.safetensors\n"
        "Exit status: 0 trained, 1 trained but some rows could not be used (see the errors table),\n"
        "2 nothing done (bad arguments, config, data, weights, incompatible output), 130 interrupted.",
        "the data (a .csv/.tsv/.jsonl/.parquet table of path,caption rows, or an MSR-VTT folder) and "
        "config overrides such as train.epochs=5 (see 'tomeray config train')",
        "output directory (adapter.safetensors, metrics.json, checkpoints; a rerun resumes)")


def _loss(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def print_summary(s: TrainSummary) -> None:
    lines = []
    if s.already_done:
        lines.append(f"already trained ({len(s.epochs)} epochs) -> {s.out}; use a new --out to train again")
    for e in s.epochs:
        val = e.get("val") or {}
        shown = (f", val t2v R@1 {val['t2v']['R@1']:.1f} R@5 {val['t2v']['R@5']:.1f}, v2t R@1 "
                 f"{val['v2t']['R@1']:.1f}") if val else ""
        lines.append(f"epoch {e['epoch']}: train loss {_loss(e.get('train_loss'))}, "
                     f"{e.get('clips_per_s', 0.0):.1f} clips/s{shown}")
    if not s.complete:
        lines.append(f"stopped after {len(s.epochs)} of {s.epochs_total} epochs; rerun the same command to "
                     "resume")
    if s.adapter_path:
        lines.append(f"adapter: {s.adapter_path} ({s.adapter_id}); use it with "
                     f"model.adapter={s.adapter_path}")
    lines.append(f"time {s.seconds:.1f} s" + (f", resumed from {s.resumed_from}" if s.resumed_from else ""))
    print_report(lines, s.weights_id, "the adapter is trained on random features, for smoke tests only",
                 s.failures, f"{s.out}/errors")


def _run(args, inputs: list[str], overrides: list[str]) -> int:
    if len(inputs) != 1:
        raise InputError(f"give one data source (a table or an MSR-VTT folder); got {len(inputs)}: {inputs}")
    summary = run_train(inputs[0], args.out, overrides, args.address)
    print_summary(summary)
    return summary.exit_code


def main(argv: list[str] | None = None) -> int:
    return run_job_command(_parser(), argv, _run, "interrupted; rerun the same command to resume from the "
                                                  "last checkpoint")
