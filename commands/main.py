"""`ernie-cls` command line: a thin layer over the training/serving stages.

Each subcommand's flags are its stage's config dataclass (declared once, with defaults and help: ernie_cls/options.py);
the command parses them into that config and calls the stage. Errors of the project's hierarchy are
printed as "error: ... / hint: ..." with exit code 2 (they are the user's to fix); anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from bench.config import BenchConfig, RobustnessConfig, ServiceBenchConfig
from ernie_cls import __version__
from ernie_cls.errors import ErnieClsError
from ernie_cls.options import add_options, config_from
from release.config import ExportConfig, VerifyConfig
from training.config import QATConfig, TrainConfig

# The stages themselves are imported inside each command, after main() has set Paddle's CPU environment (threads
# are read when numpy/Paddle load) and so `--help` loads the configs only: no numpy, no optional dependency.

log = logging.getLogger("ernie_cls")


THREADS_HELP = "CPU threads (default: all cores)"
# Fields of ServiceBenchConfig that `bench soak` does not read (it measures capacity at 64 connections, one text per
# request), so they are not its flags; `threads` stays unset, as `main()` would otherwise pin OMP_NUM_THREADS.
SOAK_IGNORES = ("duration", "concurrency", "batch_sizes", "pairs", "own_core_pairs", "texts_per_request", "threads")


def build_parser() -> argparse.ArgumentParser:
    """Every stage's flags come from its config dataclass (ernie_cls/options.py); only the commands that have no
    stage config (evaluate, predict) and what a command adds (--threads for Paddle stages) are declared here."""
    parser = argparse.ArgumentParser(prog="ernie-cls", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"ernie-cls {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    stages = [
        ("train", "fine-tune ERNIE on a labelled CSV/TSV/JSONL file", TrainConfig),
        ("qat", "quantisation-aware fine-tune of an FP32 checkpoint (INT8 scales for export)", QATConfig),
        ("export", "write a verified artifact: Paddle inference + ONNX models, tokenizer, manifest", ExportConfig),
    ]
    for name, help_text, config in stages:
        stage = _command(sub, name, help_text)
        add_options(stage, config)
        stage.add_argument("--threads", type=int, help=THREADS_HELP)
    add_options(
        _command(sub, "verify", "the ten pre-launch checks on an artifact, as the service loads it"), VerifyConfig
    )
    _add_bench(_command(sub, "bench", "benchmarks: model formats, the service under load, soak, robustness"))

    e = _command(sub, "evaluate", "metrics of a checkpoint on a labelled file")
    e.add_argument("--checkpoint", required=True, help="a checkpoint directory (e.g. runs/x/best)")
    e.add_argument("--data", required=True)
    e.add_argument("--text-col", help="column holding the text (default: text/review/sentence/content/...)")
    e.add_argument("--label-col", help="column holding the label (default: label/class/category/...)")
    e.add_argument("--output", help="also write the metrics JSON here")
    e.add_argument("--threads", type=int, help=THREADS_HELP)

    p = _command(sub, "predict", "label texts from a file or stdin (JSON lines out)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", default="-", help="- for stdin (one text per line), .txt, or CSV/TSV/JSONL")
    p.add_argument("--text-col")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    return parser


def _command(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand; flags are never abbreviated (a new flag would otherwise make old abbreviations ambiguous)."""
    parser: argparse.ArgumentParser = sub.add_parser(name, allow_abbrev=False, help=help_text)
    return parser


def _add_bench(bench: argparse.ArgumentParser) -> None:
    targets = bench.add_subparsers(dest="bench_target", required=True)
    add_options(
        _command(targets, "model", "latency/throughput of every format of an artifact, JSON + PNG"), BenchConfig
    )
    add_options(
        _command(targets, "service", "the HTTP service under load vs the raw model, JSON + PNG"), ServiceBenchConfig
    )
    soak = _command(targets, "soak", "hours-long style stability run: steady load, latency and memory per minute")
    add_options(soak, ServiceBenchConfig, exclude=SOAK_IGNORES, port=8766, output="reports/soak.json")
    soak.add_argument("--minutes", type=float, default=30)
    soak.add_argument("--load", type=float, default=0.7, help="fraction of the measured capacity")
    robustness = _command(targets, "robustness", "test accuracy under text noise, per model and format")
    robustness.add_argument(
        "artifacts", nargs="+", help="name=exported/<dir> (the first two are compared as plain, robust)"
    )
    add_options(robustness, RobustnessConfig)


def _cmd_train(args: argparse.Namespace) -> int:
    from training.finetune import train

    cfg = config_from(TrainConfig, args)
    metrics = train(cfg)
    summary: dict[str, object] = {
        split: {k: metrics[split][k] for k in ("accuracy", "macro_f1", "note") if k in metrics[split]}
        for split in ("dev", "test")
        if metrics.get(split)
    }
    if metrics.get("baseline"):
        summary["baseline"] = {k: metrics["baseline"][k] for k in ("model", "split", "accuracy", "macro_f1")}
        summary["beats_baseline"] = metrics["baseline_verdict"]["beats_baseline"]
    summary.update(
        train_seconds=metrics["train_seconds"],
        samples_per_second=metrics["train_samples_per_second"],
        checkpoint=os.path.join(cfg.output, "best"),
    )
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_file

    metrics = evaluate_file(args.checkpoint, args.data, args.text_col, args.label_col)
    text = json.dumps(metrics, ensure_ascii=False, indent=2)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    print(text)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from training.evaluate import load_checkpoint, predict_texts, read_texts

    loaded = load_checkpoint(args.checkpoint)  # fail on a bad checkpoint before consuming stdin
    texts = read_texts(args.input, args.text_col)
    for row in predict_texts(loaded, texts, args.top_k):
        print(json.dumps(row, ensure_ascii=False), flush=False)
    return 0


PADDLE_COMMANDS = {"train", "qat", "evaluate", "predict", "export", "bench", "verify"}


def _cmd_export(args: argparse.Namespace) -> int:
    from ernie_cls.artifact import sha256_file
    from release.export import export

    manifest = export(config_from(ExportConfig, args))
    summary = {
        "artifact": args.output,
        # the value to pin in deployment (ERNIE_CLS_ARTIFACT_SHA256): any other manifest is then refused
        "manifest_sha256": sha256_file(Path(args.output) / "manifest.json"),
        "formats": sorted(manifest["formats"]),
        "metrics": manifest["metrics"],
        "checks": {k: v["passed"] for k, v in manifest["checks"].items()},
    }
    summary["metrics"].pop("training", None)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


def _cmd_qat(args: argparse.Namespace) -> int:
    from training.qat import run_qat

    metrics = run_qat(config_from(QATConfig, args))
    shown = ("fp32", "int8_simulated", "agreement_with_fp32", "steps", "train_seconds")
    print(json.dumps({k: metrics[k] for k in shown}, indent=2))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.bench_target == "service":
        return _cmd_bench_service(args)
    if args.bench_target == "soak":
        return _cmd_bench_soak(args)
    if args.bench_target == "robustness":
        return _cmd_bench_robustness(args)

    from bench.formats import run_bench

    report = run_bench(config_from(BenchConfig, args))
    for row in report["int8_vs_fp32"]:
        print(json.dumps(row))
    print(f"wrote {args.output} and {args.output.rsplit('.', 1)[0]}.png", file=sys.stderr)
    return 0


def _cmd_bench_service(args: argparse.Namespace) -> int:
    from bench.serving import run_service_bench

    cfg = config_from(ServiceBenchConfig, args)
    report = run_service_bench(cfg, command="ernie-cls " + " ".join(sys.argv[1:]))
    print(json.dumps(report["targets"], indent=2))
    own_core = report["c64_over_raw_with_a_core_for_the_model"]
    if own_core:
        print(f"c64 / raw with a core for the model alone: {own_core['ratio']}", file=sys.stderr)
    print(f"wrote {args.output} and {args.output.rsplit('.', 1)[0]}.png", file=sys.stderr)
    return 0 if all(t is None or t["passed"] for t in report["targets"].values()) else 1


def _cmd_bench_soak(args: argparse.Namespace) -> int:
    from bench.serving import run_soak

    cfg = config_from(ServiceBenchConfig, args, exclude=SOAK_IGNORES)
    report = run_soak(cfg, args.minutes, args.load, command="ernie-cls " + " ".join(sys.argv[1:]))
    print(json.dumps(report["targets"], indent=2))
    return 0 if all(t["passed"] for t in report["targets"].values()) else 1


def _cmd_bench_robustness(args: argparse.Namespace) -> int:
    from bench.robustness import run_robustness

    pairs = [a.split("=", 1) if "=" in a else (Path(a).name, a) for a in args.artifacts]
    cfg = config_from(RobustnessConfig, args, artifacts=dict(pairs))
    report = run_robustness(cfg, command="ernie-cls " + " ".join(sys.argv[1:]))
    print(Path(args.output).with_suffix(".md").read_text(encoding="utf-8"))
    print(json.dumps(report["targets"], indent=2))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from release.verify import run_verify

    report = run_verify(config_from(VerifyConfig, args))
    for check in report["checks"]:
        problems = "; ".join(check["problems"])
        print(f"{check['status']:>7}  {check['name']}" + (f": {problems}" if problems else ""))
    print(
        f"{'PASSED' if report['passed'] else 'FAILED'} in {report['seconds']} s; report: {report['output']}/VERIFY.md"
    )
    if report.get("manifest_sha256"):
        print(f"pin it: ERNIE_CLS_ARTIFACT_SHA256={report['manifest_sha256']}")
    return 0 if report["passed"] else 1


COMMANDS = {
    "verify": _cmd_verify,
    "train": _cmd_train,
    "bench": _cmd_bench,
    "qat": _cmd_qat,
    "export": _cmd_export,
    "evaluate": _cmd_evaluate,
    "predict": _cmd_predict,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command in PADDLE_COMMANDS:
        from training import paddle_env  # before anything imports paddle

        paddle_env.configure(getattr(args, "threads", None))
    try:
        return COMMANDS[args.command](args)
    except ErnieClsError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
