"""`ernie-cls` command line: a thin layer over the training/serving stages.

Each subcommand parses flags into the stage's typed config and calls it. Errors of the project's hierarchy are
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

from ernie_cls import __version__
from ernie_cls.errors import ErnieClsError

log = logging.getLogger("ernie_cls")


def _parse_label_names(value: str | None) -> dict[str, str]:
    if not value:
        return {}
    pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise argparse.ArgumentTypeError("use raw=name pairs, e.g. 0=negative,1=positive")
    return {k.strip(): v.strip() for k, v in pairs}


def _int_list(value: str) -> list[int]:
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("use comma-separated integers, e.g. 1,8,32") from None


def _add_data_cols(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-col", help="column holding the text (default: text/review/sentence/content/...)")
    p.add_argument("--label-col", help="column holding the label (default: label/class/category/...)")


def _add_ema_decay(p: argparse.ArgumentParser) -> None:
    """`train` and `qat` each choose weight averaging for their own stage."""
    p.add_argument(
        "--ema-decay", type=float, default=0.0, help="evaluate/save a moving average of the weights, e.g. 0.99 (0: off)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ernie-cls", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ernie-cls {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune ERNIE on a labelled CSV/TSV/JSONL file")
    t.add_argument("--data", help="one labelled file, split into train/dev/test (stratified, --seed)")
    t.add_argument("--train-file", help="your own training split (then --dev-file is required)")
    t.add_argument("--dev-file")
    t.add_argument("--test-file")
    _add_data_cols(t)
    t.add_argument(
        "--label-names",
        type=_parse_label_names,
        default={},
        help="display names for raw labels, e.g. 0=negative,1=positive",
    )
    t.add_argument(
        "--base-model",
        default="scratch:nano",
        help="PaddleNLP name (ernie-3.0-mini-zh, needs internet), a checkpoint directory, "
        "or scratch:pico|nano|micro|mini (random init, corpus vocabulary)",
    )
    t.add_argument("--output", required=True, help="run directory; the best checkpoint goes to <output>/best")
    t.add_argument("--overwrite", action="store_true", help="allow an existing, non-empty --output")
    t.add_argument("--max-seq-len", type=int, default=128)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--learning-rate", type=float, help="default 3e-4 from scratch, 5e-5 from pretrained weights")
    t.add_argument("--warmup-ratio", type=float, default=0.1)
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--dropout", type=float, default=0.1, help="hidden dropout")
    t.add_argument("--attention-dropout", type=float, default=0.0)
    t.add_argument("--vocab-size", type=int, default=8000, help="max corpus vocabulary size for scratch presets")
    t.add_argument(
        "--pretrain-epochs",
        type=int,
        default=0,
        help="scratch presets: masked-LM epochs on the training texts before fine-tuning",
    )
    t.add_argument(
        "--pretrain-homophones",
        type=float,
        default=0.0,
        help="share of the masked-LM stage's [MASK] replacements that put a homophone of the character instead "
        "(MacBERT-style correction; robustness to pinyin-IME errors; default 0: off)",
    )
    t.add_argument("--test-size", type=float, default=0.2)
    t.add_argument("--dev-size", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--eval-every", type=int, default=0, help="steps between dev evaluations (0: each epoch)")
    t.add_argument("--patience", type=int, default=3, help="evaluations without improvement before stopping")
    t.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    t.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    t.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (GPU default)")
    t.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = t.add_argument_group("robustness (all off by default; costs in docs/robustness.md; `qat` inherits them)")
    r.add_argument("--label-smoothing", type=float, default=0.0, help="e.g. 0.1")
    r.add_argument("--adversarial", choices=("none", "fgm"), default="none", help="FGM on the word embeddings")
    r.add_argument("--adv-epsilon", type=float, default=1.0)
    r.add_argument("--noise-augment", type=float, default=0.0, help="share of training texts seen noisy, e.g. 0.3")
    r.add_argument("--noise-rate", type=float, default=0.1, help="per-character rate of that noise")
    r.add_argument("--rdrop-alpha", type=float, default=0.0, help="R-Drop consistency weight, e.g. 1.0")
    r.add_argument(
        "--noise-consistency",
        type=float,
        default=0.0,
        help="weight of the KL between predictions on each text and on a noisy copy (--noise-rate), e.g. 1.0",
    )
    _add_ema_decay(t)
    d = t.add_argument_group("distillation")
    d.add_argument("--teacher", help="checkpoint whose soft labels the student also learns")
    d.add_argument("--distill-alpha", type=float, default=0.5)
    d.add_argument("--distill-temperature", type=float, default=2.0)

    e = sub.add_parser("evaluate", help="metrics of a checkpoint on a labelled file")
    e.add_argument("--checkpoint", required=True, help="a checkpoint directory (e.g. runs/x/best)")
    e.add_argument("--data", required=True)
    _add_data_cols(e)
    e.add_argument("--output", help="also write the metrics JSON here")
    e.add_argument("--threads", type=int)

    x = sub.add_parser("export", help="write a verified artifact: Paddle inference + ONNX models, tokenizer, manifest")
    x.add_argument("--checkpoint", required=True, help="the FP32 checkpoint (runs/<x>/best)")
    x.add_argument("--output", required=True, help="artifact directory, e.g. exported/waimai-sentiment")
    x.add_argument("--qat", help="QAT checkpoint from `ernie-cls qat` (adds INT8 Paddle/ONNX models + Triton repo)")
    x.add_argument("--min-int8-agreement", type=float, default=0.99, help="INT8 vs QAT argmax agreement on dev")
    x.add_argument("--max-int8-accuracy-drop", type=float, default=0.005, help="INT8 vs FP32 test accuracy")
    x.add_argument(
        "--formats",
        dest="keep_formats",
        type=lambda v: v.split(","),
        help="formats to ship (comma-separated); all are still checked. Default: all",
    )
    x.add_argument("--name", help="model name in the manifest (default: the output directory's name)")
    x.add_argument("--version", default="1", help="model version in the manifest")
    x.add_argument("--data", help="labelled file for the export checks (default: the training split)")
    _add_data_cols(x)
    x.add_argument("--parity-tolerance", type=float, default=1e-4, help="max |logit diff| Paddle vs ONNX on dev")
    x.add_argument("--overwrite", action="store_true")
    x.add_argument("--threads", type=int)

    q = sub.add_parser("qat", help="quantisation-aware fine-tune of an FP32 checkpoint (INT8 scales for export)")
    q.add_argument("--checkpoint", required=True, help="the FP32 checkpoint (runs/<x>/best)")
    q.add_argument("--output", required=True, help="run directory; the QAT checkpoint goes to <output>/best")
    q.add_argument("--epochs", type=int, default=1)
    q.add_argument("--learning-rate", type=float, default=5e-5)
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--eval-every", type=int, default=0)
    q.add_argument("--patience", type=int, default=2)
    q.add_argument("--moving-rate", type=float, default=0.9, help="activation scale moving average")
    _add_ema_decay(q)
    q.add_argument("--max-steps", type=int, default=0)
    q.add_argument("--seed", type=int, default=42)
    q.add_argument("--data", help="labelled file (default: the FP32 model's training data and split)")
    q.add_argument("--overwrite", action="store_true")
    q.add_argument("--threads", type=int)
    q.add_argument("--no-progress", action="store_true")

    b = sub.add_parser("bench", help="benchmarks: `bench model <artifact>` (formats x batch sizes x lengths)")
    bsub = b.add_subparsers(dest="bench_target", required=True)
    bm = bsub.add_parser("model", help="latency/throughput of every format of an artifact, JSON + PNG")
    bm.add_argument("artifact", help="exported/<name>")
    bm.add_argument("--batch-sizes", type=_int_list, default=[1, 8, 32, 64])
    bm.add_argument("--seq-lens", type=_int_list, default=[16, 32, 64, 128, 256])
    bm.add_argument("--formats", type=lambda v: v.split(","), help="default: all runtime formats in the artifact")
    bm.add_argument("--threads", type=int, default=0, help="inference threads (default: all cores)")
    bm.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds per format and shape")
    bm.add_argument("--output", default="reports/bench-model.json")

    bs = bsub.add_parser("service", help="the HTTP service under load vs the raw model, JSON + PNG")
    bs.add_argument("artifact", nargs="?", default="exported/waimai-sentiment")
    bs.add_argument("--data", default="data/waimai_10k.csv", help="texts to send (CSV/TSV/JSONL)")
    bs.add_argument("--text-col", default="review")
    bs.add_argument("--texts", type=int, default=2000, help="how many texts (sampled with --seed)")
    bs.add_argument("--texts-per-request", type=int, default=1, help="texts in each request body")
    bs.add_argument("--workers", type=int, default=0, help="model instances (default: one per core)")
    bs.add_argument("--threads", type=int, default=1, help="threads per model instance")
    bs.add_argument("--duration", type=float, default=15.0, help="measured seconds per load run")
    bs.add_argument("--concurrency", type=_int_list, default=[1, 8, 32, 64])
    bs.add_argument("--raw-seconds", type=float, default=4.0, help="timed seconds per raw (no HTTP) run")
    bs.add_argument("--pairs", type=int, default=3, help="back-to-back raw-ceiling / c64 pairs for the c64 target")
    bs.add_argument(
        "--own-core-pairs",
        type=int,
        default=3,
        help="the same pairs with one model instance pinned to a core of its own, the HTTP side and the load "
        "generator on the others (Linux, 2+ cores; 0: skip)",
    )
    bs.add_argument("--port", type=int, default=8765)
    bs.add_argument("--seed", type=int, default=0)
    bs.add_argument("--output", default="reports/bench-service.json")

    so = bsub.add_parser("soak", help="hours-long style stability run: steady load, latency and memory per minute")
    so.add_argument("artifact", nargs="?", default="exported/waimai-sentiment")
    so.add_argument("--minutes", type=float, default=30)
    so.add_argument("--load", type=float, default=0.7, help="fraction of the measured capacity")
    so.add_argument("--data", default="data/waimai_10k.csv")
    so.add_argument("--text-col", default="review")
    so.add_argument("--workers", type=int, default=0)
    so.add_argument("--port", type=int, default=8766)
    so.add_argument("--output", default="reports/soak.json")

    v = sub.add_parser("verify", help="the ten pre-launch checks on an artifact, as the service loads it")
    v.add_argument("artifact", help="exported/<name>")
    v.add_argument("--data", help="labelled file for accuracy/agreement (its own test split if it trained the model)")
    v.add_argument("--text-col")
    v.add_argument("--label-col")
    v.add_argument("--split", choices=["auto", "test", "all"], default="auto")
    v.add_argument("--max-examples", type=int, default=0)
    v.add_argument("--output", help="report directory (default reports/verify-<name>)")
    v.add_argument("--max-accuracy-drop", type=float, default=0.01, help="vs the accuracy recorded at export")
    v.add_argument("--min-accuracy", type=float, default=0.0)
    v.add_argument("--max-fp32-logit-diff", type=float, default=1e-4)
    v.add_argument("--min-int8-agreement", type=float, default=0.99)
    v.add_argument("--max-int8-accuracy-drop", type=float, default=0.01)
    v.add_argument("--max-p99-ms-batch1", type=float, default=50.0)
    v.add_argument("--threads", type=int, default=1)
    v.add_argument("--explain", type=int, default=5, help="texts to explain with occlusion attributions")

    br = bsub.add_parser("robustness", help="test accuracy under text noise, per model and format, JSON + PNG")
    br.add_argument("artifacts", nargs="+", help="name=exported/<dir> (the first two are compared as plain, robust)")
    br.add_argument("--data", default="data/waimai_10k.csv")
    br.add_argument("--text-col", default="review")
    br.add_argument("--label-col", default="label")
    br.add_argument("--rates", type=lambda v: [float(x) for x in v.split(",")], default=[0.05, 0.1, 0.2])
    br.add_argument("--formats", type=lambda v: v.split(","), default=["onnx-fp32", "onnx-int8-cpu"])
    br.add_argument("--kinds", type=lambda v: v.split(","), default=None, help="noise kinds (default: all + mixed)")
    br.add_argument("--draws", type=int, default=1, help="independent noise draws per condition, accuracy averaged")
    br.add_argument("--output", default="reports/bench-robustness.json")

    p = sub.add_parser("predict", help="label texts from a file or stdin (JSON lines out)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", default="-", help="- for stdin (one text per line), .txt, or CSV/TSV/JSONL")
    p.add_argument("--text-col")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--threads", type=int)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from training.finetune import TrainConfig, train

    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields}
    cfg = TrainConfig(**values, progress=not args.no_progress)
    metrics = train(cfg)
    summary: dict[str, object] = {
        split: {k: metrics[split][k] for k in ("accuracy", "macro_f1")}
        for split in ("dev", "test")
        if metrics.get(split)
    }
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
    from release.export import ExportConfig, export

    fields = ExportConfig.__dataclass_fields__
    manifest = export(ExportConfig(**{k: v for k, v in vars(args).items() if k in fields}))
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
    from training.qat import QATConfig, run_qat

    fields = QATConfig.__dataclass_fields__
    cfg = QATConfig(**{k: v for k, v in vars(args).items() if k in fields}, progress=not args.no_progress)
    metrics = run_qat(cfg)
    print(json.dumps({k: metrics[k] for k in ("fp32", "int8_simulated", "steps", "train_seconds")}, indent=2))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.bench_target == "service":
        return _cmd_bench_service(args)
    if args.bench_target == "soak":
        return _cmd_bench_soak(args)
    if args.bench_target == "robustness":
        return _cmd_bench_robustness(args)
    from bench.formats import BenchConfig, run_bench

    fields = BenchConfig.__dataclass_fields__
    report = run_bench(BenchConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    for row in report["int8_vs_fp32"]:
        print(json.dumps(row))
    print(f"wrote {args.output} and {args.output.rsplit('.', 1)[0]}.png", file=sys.stderr)
    return 0


def _cmd_bench_service(args: argparse.Namespace) -> int:
    from bench.serving import ServiceBenchConfig, run_service_bench

    fields = ServiceBenchConfig.__dataclass_fields__
    cfg = ServiceBenchConfig(**{k: v for k, v in vars(args).items() if k in fields})
    report = run_service_bench(cfg, command="ernie-cls " + " ".join(sys.argv[1:]))
    print(json.dumps(report["targets"], indent=2))
    own_core = report["c64_over_raw_with_a_core_for_the_model"]
    if own_core:
        print(f"c64 / raw with a core for the model alone: {own_core['ratio']}", file=sys.stderr)
    print(f"wrote {args.output} and {args.output.rsplit('.', 1)[0]}.png", file=sys.stderr)
    return 0 if all(t is None or t["passed"] for t in report["targets"].values()) else 1


def _cmd_bench_soak(args: argparse.Namespace) -> int:
    from bench.serving import ServiceBenchConfig, run_soak

    fields = ServiceBenchConfig.__dataclass_fields__
    cfg = ServiceBenchConfig(**{k: v for k, v in vars(args).items() if k in fields})
    report = run_soak(cfg, args.minutes, args.load, command="ernie-cls " + " ".join(sys.argv[1:]))
    print(json.dumps(report["targets"], indent=2))
    return 0 if all(t["passed"] for t in report["targets"].values()) else 1


def _cmd_bench_robustness(args: argparse.Namespace) -> int:
    from bench.robustness import RobustnessConfig, run_robustness

    pairs = [a.split("=", 1) if "=" in a else (Path(a).name, a) for a in args.artifacts]
    cfg = RobustnessConfig(
        artifacts=dict(pairs),
        data=args.data,
        text_col=args.text_col,
        label_col=args.label_col,
        rates=args.rates,
        formats=args.formats,
        draws=args.draws,
        output=args.output,
        **({"kinds": args.kinds} if args.kinds else {}),
    )
    report = run_robustness(cfg, command="ernie-cls " + " ".join(sys.argv[1:]))
    print(Path(args.output).with_suffix(".md").read_text(encoding="utf-8"))
    print(json.dumps(report["targets"], indent=2))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from release.verify import VerifyConfig, run_verify

    fields = VerifyConfig.__dataclass_fields__
    report = run_verify(VerifyConfig(**{k: v for k, v in vars(args).items() if k in fields}))
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
