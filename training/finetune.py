"""Fine-tune ERNIE for classification.

    TrainConfig -> load data + split -> model & tokenizer (modeling.build_model) -> tokenise once
    -> epochs of length-bucketed, dynamically padded batches (AdamW, warmup + linear decay, grad clipping)
    -> evaluate on dev every `eval_every` steps -> best dev macro-F1 saved atomically to <output>/best
    -> early stop after `patience` evaluations without improvement -> test metrics -> metrics.json

A checkpoint directory (``<output>/best``) holds everything needed to reload it: the paddlenlp model
(``save_pretrained``), the tokenizer files, ``label_map.json``, ``training_config.json`` and ``metrics.json``.
It is written to ``best.tmp`` first and swapped in by rename, so a crash never destroys the last good one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ernie_cls.errors import ConfigError, OutputExistsError
from ernie_cls.tokenization import ErnieTokenizerFast
from training.data import (
    Example,
    LabelMap,
    Splits,
    check_known_labels,
    check_trainable,
    load_examples,
    stratified_split,
)
from training.distributed import agree, barrier, init_if_launched, rank_and_world, rank_share
from training.metrics import classification_metrics
from training.modeling import build_model, parse_base_model

log = logging.getLogger(__name__)

BEST_DIR = "best"
LABEL_MAP_FILE = "label_map.json"
TRAINING_CONFIG_FILE = "training_config.json"
METRICS_FILE = "metrics.json"


@dataclass
class TrainConfig:
    output: str
    data: str | None = None  # one labelled file, split into train/dev/test
    train_file: str | None = None  # or user-given splits
    dev_file: str | None = None
    test_file: str | None = None
    text_col: str | None = None
    label_col: str | None = None
    label_names: dict[str, str] = field(default_factory=dict)
    base_model: str = "scratch:nano"
    max_seq_len: int = 128
    batch_size: int = 32
    epochs: int = 4
    learning_rate: float | None = None  # default: 3e-4 from scratch, 5e-5 from pretrained weights
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    dropout: float = 0.1
    attention_dropout: float = 0.0
    vocab_size: int = 8000
    pretrain_epochs: int = 0  # scratch only: masked-LM epochs on the training texts before fine-tuning
    pretrain_homophones: float = 0.0  # share of MLM's [MASK] replacements that use a homophone instead
    test_size: float = 0.2
    dev_size: float = 0.1
    seed: int = 42
    eval_every: int = 0  # steps; 0 = once per epoch
    patience: int = 3  # evaluations without dev macro-F1 improvement before stopping
    max_steps: int = 0  # 0 = no limit (used by smoke runs)
    overwrite: bool = False
    device: str = "auto"  # auto | cpu | gpu
    amp: bool | None = None  # default: on for GPU
    progress: bool = True
    ema_decay: float = 0.0  # > 0: evaluate and save an exponential moving average of the weights (e.g. 0.99)
    # Robustness options (all off by default; docs/robustness.md has what each costs in training time):
    label_smoothing: float = 0.0  # cross-entropy against (1 - eps) one-hot + eps uniform
    adversarial: str = "none"  # "fgm": a second loss on word embeddings pushed along their gradient
    adv_epsilon: float = 1.0  # FGM perturbation norm
    noise_augment: float = 0.0  # share of drawn training texts replaced by a noisy copy (training/noise.py)
    noise_rate: float = 0.1  # per-character rate of that noise ("mixed" kinds)
    rdrop_alpha: float = 0.0  # R-Drop: two dropout passes, + alpha x symmetric KL between them
    noise_consistency: float = 0.0  # a second pass on a noisy copy of the batch, + alpha x symmetric KL to it
    teacher: str | None = None  # distillation: a checkpoint whose soft labels the student learns too
    distill_alpha: float = 0.5  # weight of the soft-label loss
    distill_temperature: float = 2.0

    def validate(self) -> None:
        if self.data is None and self.train_file is None:
            raise ConfigError("No training data given.", "Pass --data <file> or --train-file/--dev-file/--test-file.")
        if self.data is not None and self.train_file is not None:
            raise ConfigError("--data and --train-file are exclusive.", "Give one labelled file or your own splits.")
        if self.train_file is not None and self.dev_file is None:
            raise ConfigError("--train-file needs --dev-file for early stopping.", "Add --dev-file <file>.")
        if not 0 < self.test_size < 1 or not 0 < self.dev_size < 1 or self.test_size + self.dev_size >= 1:
            raise ConfigError("--test-size and --dev-size must be in (0, 1) and sum below 1.", "E.g. 0.2 and 0.1.")
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1.", "Use a positive value.")
        if self.max_seq_len < 8:
            raise ConfigError("--max-seq-len must be >= 8.", "128 suits short customer messages.")
        if self.adversarial not in ("none", "fgm"):
            raise ConfigError(f"--adversarial {self.adversarial!r} is not known.", "Use none or fgm.")
        for name in ("label_smoothing", "noise_augment", "noise_rate", "distill_alpha"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1).", "E.g. 0.1.")
        if not 0 <= self.pretrain_homophones <= 1:
            raise ConfigError("--pretrain-homophones must be in [0, 1].", "E.g. 0.5.")
        if self.pretrain_homophones and not self.pretrain_epochs:
            raise ConfigError(
                "--pretrain-homophones changes the masked-LM stage, which is off.", "Add --pretrain-epochs N."
            )
        if not 0 <= self.ema_decay < 1:
            raise ConfigError("--ema-decay must be in [0, 1).", "E.g. 0.99 (about the last 100 steps), or 0 for off.")
        if min(self.rdrop_alpha, self.noise_consistency) < 0 or self.adv_epsilon <= 0 or self.distill_temperature <= 0:
            raise ConfigError(
                "--rdrop-alpha and --noise-consistency must be >= 0, --adv-epsilon and --distill-temperature > 0.",
                "E.g. 1.0.",
            )
        if self.rdrop_alpha > 0 and self.noise_consistency > 0:
            raise ConfigError(
                "--rdrop-alpha and --noise-consistency each add a second forward pass; they do not combine.",
                "Choose one (--noise-consistency is R-Drop whose second pass sees a noisy copy).",
            )


# --------------------------------------------------------------------------------------------- data
def load_splits(cfg: TrainConfig) -> tuple[Splits, LabelMap, dict]:
    provenance: dict = {}
    if cfg.data is not None:
        examples, report = load_examples(cfg.data, cfg.text_col, cfg.label_col)
        check_trainable(examples, cfg.data)
        splits = stratified_split(examples, cfg.test_size, cfg.dev_size, cfg.seed)
        provenance["data"] = asdict(report)
    else:
        assert cfg.train_file is not None and cfg.dev_file is not None
        train, rep_train = load_examples(cfg.train_file, cfg.text_col, cfg.label_col)
        check_trainable(train, cfg.train_file)
        dev, rep_dev = load_examples(cfg.dev_file, cfg.text_col, cfg.label_col)
        test, rep_test = load_examples(cfg.test_file, cfg.text_col, cfg.label_col) if cfg.test_file else ([], None)
        splits = Splits(train, dev, test)
        provenance.update(train=asdict(rep_train), dev=asdict(rep_dev), test=asdict(rep_test) if rep_test else None)
    label_map = LabelMap.from_examples(splits.train, cfg.label_names)
    unknown_names = set(cfg.label_names) - set(label_map.labels)
    if unknown_names:
        raise ConfigError(
            f"--label-names mentions {sorted(unknown_names)}, which are not labels in the data.",
            f"Name the labels that exist: {label_map.labels}.",
        )
    check_known_labels(splits.dev, label_map, cfg.dev_file or cfg.data or "")
    check_known_labels(splits.test, label_map, cfg.test_file or cfg.data or "")
    return splits, label_map, provenance


@dataclass
class Encoded:
    ids: list[list[int]]
    labels: np.ndarray
    texts: list[str] = field(default_factory=list)  # normalised texts (noise augmentation re-encodes them)
    teacher_logits: np.ndarray | None = None  # distillation targets, one row per text


def encode(examples: list[Example], tokenizer: ErnieTokenizerFast, label_map: LabelMap) -> Encoded:
    texts = [e.text for e in examples]
    ids = tokenizer.encode_ids(texts, normalized=True)
    index = {raw: i for i, raw in enumerate(label_map.labels)}
    return Encoded(ids, np.array([index[e.label] for e in examples], dtype=np.int64), texts)


def length_bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random, pool: int = 50) -> list[list[int]]:
    """Shuffle, then sort within pools of `pool` batches by length so each batch pads little, then shuffle batches.

    Keeps randomness across epochs while cutting padding: on waimai_10k this pads ~5% instead of ~3x.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


# --------------------------------------------------------------------------------------------- loop
def _set_seed(seed: int) -> None:
    import paddle

    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def logits_in_batches(
    infer: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tokenizer: ErnieTokenizerFast,
    ids: list[list[int]],
    batch_size: int = 64,
) -> np.ndarray:
    """Logits for pre-tokenised sequences, in input order, from any infer(input_ids, token_type_ids) function;
    batches are sorted by length so they pad little."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        logits = infer(*tokenizer.pad([ids[i] for i in idx]))
        if out is None:
            out = np.zeros((len(ids), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def predict_logits(model, tokenizer: ErnieTokenizerFast, ids: list[list[int]], batch_size: int = 64) -> np.ndarray:
    """Logits of a Paddle model (dygraph) for pre-tokenised sequences, in input order."""
    import paddle

    model.eval()

    def infer(input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        return model(paddle.to_tensor(input_ids), token_type_ids=paddle.to_tensor(token_type_ids)).numpy()

    with paddle.no_grad():
        return logits_in_batches(infer, tokenizer, ids, batch_size)


def warmup_then_linear_decay(learning_rate: float, total_steps: int, warmup_steps: int):
    """Paddle LR schedule: linear warmup to `learning_rate`, then linear decay to 0 at `total_steps`."""
    import paddle

    warmup = max(1, warmup_steps)
    return paddle.optimizer.lr.LambdaDecay(
        learning_rate,
        lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / max(1, total_steps - warmup))),
    )


def evaluate_encoded(model, tokenizer, data: Encoded, label_map: LabelMap) -> dict:
    logits = predict_logits(model, tokenizer, data.ids)
    names = [label_map.display(i) for i in range(len(label_map))]
    return classification_metrics(data.labels.tolist(), logits.argmax(-1).tolist(), names)


def save_checkpoint(model, tokenizer: ErnieTokenizerFast, label_map: LabelMap, extra: dict, target: Path) -> None:
    """Write a complete checkpoint next to `target`, then swap it in by rename (never a half-written best/)."""
    tmp = target.with_name(target.name + ".tmp")
    prev = target.with_name(target.name + ".prev")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    tokenizer.save(tmp)
    label_map.save(tmp / LABEL_MAP_FILE)
    for name, payload in extra.items():
        (tmp / name).write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
    shutil.rmtree(prev, ignore_errors=True)
    if target.exists():
        target.rename(prev)
    tmp.rename(target)
    shutil.rmtree(prev, ignore_errors=True)


def _prepare_output(cfg: TrainConfig) -> Path:
    out = Path(cfg.output)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise OutputExistsError(
            f"Output directory {out} already exists and is not empty.",
            "Pass --overwrite to train into it (its best/ checkpoint is only replaced by a better one from the "
            "new run), or choose another --output.",
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def _environment() -> dict:
    import paddle

    return {
        "python": platform.python_version(),
        "paddle": paddle.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


@dataclass
class FitResult:
    history: list[dict]
    best_step: int
    steps: int
    seen: int
    train_seconds: float


def fit(
    model,
    tokenizer: ErnieTokenizerFast,
    label_map: LabelMap,
    train_data: Encoded,
    dev_data: Encoded,
    cfg: TrainConfig,
    learning_rate: float,
    save_best: Callable[[dict], None],
    use_amp: bool = False,
    desc: str = "epoch",
) -> FitResult:
    """The training loop shared by fine-tuning and QAT.

    Length-bucketed batches, AdamW with linear warmup then linear decay to 0, global-norm clipping, dev
    evaluation every `cfg.eval_every` steps (default: per epoch), `save_best(dev_metrics)` on each new best dev
    macro-F1, early stop after `cfg.patience` evaluations without improvement.
    """
    import paddle
    from tqdm import tqdm

    rank, world = rank_and_world()
    lengths = [len(x) for x in train_data.ids]
    # The batch count does not depend on the shuffle; each rank runs the same share of it (training/distributed.py).
    steps_per_epoch = len(rank_share(length_bucketed_batches(lengths, cfg.batch_size, random.Random(0)), 0, world))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    schedule = warmup_then_linear_decay(learning_rate, total_steps, int(cfg.warmup_ratio * total_steps))
    no_decay = {p.name for n, p in model.named_parameters() if "bias" in n or "norm" in n}
    optimizer = paddle.optimizer.AdamW(
        learning_rate=schedule,
        parameters=[p for p in model.parameters() if not p.stop_gradient],
        weight_decay=cfg.weight_decay,
        apply_decay_param_fun=lambda name: name not in no_decay,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(cfg.max_grad_norm),
    )
    scaler = paddle.amp.GradScaler() if use_amp else None
    train_model = paddle.DataParallel(model) if world > 1 else model

    eval_every = cfg.eval_every or steps_per_epoch
    rng = random.Random(cfg.seed)
    from training.robust import RobustTraining

    robust = RobustTraining(cfg, model, tokenizer, train_data, random.Random(cfg.seed + 1), use_amp)
    from training.weight_average import WeightAverage

    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    history: list[dict] = []
    best_f1, best_step, evals_since_best = -1.0, 0, 0
    step, seen, t_train = 0, 0, 0.0
    stop = False
    for epoch in range(cfg.epochs):
        batches = rank_share(length_bucketed_batches(lengths, cfg.batch_size, rng), rank, world)
        bar = tqdm(
            batches,
            desc=f"{desc} {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress or rank != 0,
            mininterval=1.0,
            dynamic_ncols=True,
        )
        train_model.train()
        for batch in bar:
            t0 = time.perf_counter()
            input_ids, token_type_ids = tokenizer.pad(robust.batch_ids(batch))
            ids_t, types_t = paddle.to_tensor(input_ids), paddle.to_tensor(token_type_ids)
            labels = paddle.to_tensor(train_data.labels[batch])
            with paddle.amp.auto_cast(enable=use_amp):
                logits = train_model(ids_t, token_type_ids=types_t)
                loss = robust.loss(train_model, logits, labels, batch, ids_t, types_t)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.minimize(optimizer, loss)
            else:
                loss.backward()
                robust.adversarial_step(train_model, labels, ids_t, types_t)
                optimizer.step()
            optimizer.clear_grad()
            schedule.step()
            if average is not None:
                average.update()
            loss_value = float(loss)  # syncs, so the step time below is real
            t_train += time.perf_counter() - t0
            step += 1
            seen += len(batch)
            bar.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{seen / t_train:.1f}", refresh=False)
            if step % eval_every == 0 or step == total_steps:
                # With weight averaging, the averaged weights are what is evaluated and saved.
                with average.swapped_in() if average is not None else contextlib.nullcontext():
                    dev_metrics = evaluate_encoded(model, tokenizer, dev_data, label_map)
                    improved = agree(dev_metrics["macro_f1"] > best_f1)  # rank 0's verdict: ranks stop together
                    if improved and rank == 0:
                        save_best(dev_metrics)
                train_model.train()
                record = {
                    "epoch": epoch + 1,
                    "step": step,
                    "loss": loss_value,
                    "dev_accuracy": dev_metrics["accuracy"],
                    "dev_macro_f1": dev_metrics["macro_f1"],
                    "train_seconds": round(t_train, 1),
                }
                history.append(record)
                log.info("eval %s", record)
                if improved:
                    best_f1, best_step, evals_since_best = dev_metrics["macro_f1"], step, 0
                else:
                    evals_since_best += 1
                if evals_since_best >= cfg.patience:
                    log.info("early stop: dev macro-F1 has not improved for %d evaluations", cfg.patience)
                    stop = True
            if step >= total_steps or stop:
                break
        bar.close()
        if stop or step >= total_steps:
            break
    return FitResult(history, best_step, step, seen, t_train)


def train(cfg: TrainConfig) -> dict:
    """Run a full fine-tune; returns the metrics written to ``<output>/metrics.json``."""
    import paddle

    cfg.validate()
    out = _prepare_output(cfg)
    splits, label_map, provenance = load_splits(cfg)
    log.info(
        "train %d / dev %d / test %d examples, labels %s",
        *map(len, (splits.train, splits.dev, splits.test)),
        label_map.labels,
    )
    device = _select_device(cfg.device)
    use_amp = cfg.amp if cfg.amp is not None else device == "gpu"
    if use_amp and device != "gpu":
        raise ConfigError(
            "--amp (float16 mixed precision with loss scaling) needs a GPU; this run is on the CPU.",
            "Drop --amp on the CPU (it is on by default on a GPU), or train with --device gpu.",
        )
    init_if_launched()

    _set_seed(cfg.seed)
    source = parse_base_model(cfg.base_model)
    model, tokenizer = build_model(
        source,
        len(label_map),
        [e.text for e in splits.train],
        cfg.max_seq_len,
        cfg.vocab_size,
        cfg.dropout,
        cfg.attention_dropout,
    )
    if model.config.pad_token_id != tokenizer.pad_id:
        raise ConfigError(
            f"The model pads with id {model.config.pad_token_id} but its vocabulary's [PAD] is {tokenizer.pad_id}.",
            "Use the vocab.txt that came with the model.",
        )
    train_data = encode(splits.train, tokenizer, label_map)
    if cfg.teacher:
        train_data.teacher_logits = teacher_logits(cfg.teacher, label_map, train_data.texts)
    dev_data = encode(splits.dev, tokenizer, label_map)
    test_data = encode(splits.test, tokenizer, label_map) if splits.test else None

    t_wall = time.perf_counter()
    pretrain_record = None
    if cfg.pretrain_epochs:
        if source.kind != "scratch":
            raise ConfigError(
                "--pretrain-epochs is for scratch:<size> models.", "Pretrained weights need no MLM stage; drop it."
            )
        from training.noise import HomophoneTable
        from training.pretrain import PretrainConfig, pretrain_mlm

        homophones = (
            HomophoneTable.from_texts(train_data.texts).token_ids(tokenizer.vocab) if cfg.pretrain_homophones else None
        )
        pre = pretrain_mlm(
            model.config,
            tokenizer,
            train_data.ids,
            PretrainConfig(
                epochs=cfg.pretrain_epochs,
                homophone_share=cfg.pretrain_homophones,
                seed=cfg.seed,
                progress=cfg.progress,
            ),
            homophones,
        )
        missing, _ = model.set_state_dict(pre.pop("state"))
        assert all(not k.startswith("ernie.") for k in missing), missing
        pretrain_record = pre
        log.info("MLM pretraining: %s", pre)

    lr = cfg.learning_rate or (3e-4 if source.kind == "scratch" else 5e-5)
    config_record = {**asdict(cfg), "learning_rate": lr, "base_model_kind": source.kind}

    def save_best(dev_metrics: dict) -> None:
        extra = {TRAINING_CONFIG_FILE: config_record, METRICS_FILE: {"dev": dev_metrics}}
        save_checkpoint(model, tokenizer, label_map, extra, out / BEST_DIR)

    result = fit(model, tokenizer, label_map, train_data, dev_data, cfg, lr, save_best, use_amp)
    wall = time.perf_counter() - t_wall
    barrier()  # rank 0 has written best/ before any rank reads it

    # Reload the best checkpoint so test metrics describe exactly what was saved.
    from training.modeling import load_checkpoint

    best_model, _, _ = load_checkpoint(out / BEST_DIR)
    metrics = {
        "dev": evaluate_encoded(best_model, tokenizer, dev_data, label_map),
        "test": evaluate_encoded(best_model, tokenizer, test_data, label_map) if test_data else None,
        "best_step": result.best_step,
        "steps": result.steps,
        "train_seconds": round(result.train_seconds, 1),
        "pretrain": pretrain_record,
        "wall_seconds": round(wall, 1),
        "train_samples_per_second": round(result.seen / result.train_seconds, 2) if result.train_seconds else None,
        "history": result.history,
        "environment": _environment(),
        "provenance": {**provenance, "base_model": cfg.base_model},
    }
    if paddle.distributed.get_rank() == 0:
        text = json.dumps(metrics, ensure_ascii=False, indent=2)
        (out / BEST_DIR / METRICS_FILE).write_text(text, encoding="utf-8")
        (out / METRICS_FILE).write_text(text, encoding="utf-8")
    return metrics


def teacher_logits(checkpoint: str, label_map: LabelMap, texts: list[str]) -> np.ndarray:
    """The teacher's logits on the training texts, through its own tokenizer (it may have another vocabulary)."""
    from training.modeling import load_checkpoint

    teacher, teacher_tokenizer, teacher_labels = load_checkpoint(checkpoint)
    if list(teacher_labels.labels) != list(label_map.labels):
        raise ConfigError(
            f"The teacher {checkpoint} predicts {teacher_labels.labels}, the student {label_map.labels}.",
            "Distil from a teacher trained on the same labels.",
        )
    ids = teacher_tokenizer.encode_ids(texts, normalized=True)
    log.info("distillation: teacher %s scored %d training texts", checkpoint, len(texts))
    return predict_logits(teacher, teacher_tokenizer, ids)


def _select_device(requested: str) -> str:
    import paddle

    has_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if requested == "gpu" and not has_gpu:
        raise ConfigError(
            "--device gpu asked for, but this paddle has no usable GPU.",
            "Install paddlepaddle-gpu (see README, GPU section) or use --device cpu.",
        )
    device = "gpu" if requested == "gpu" or (requested == "auto" and has_gpu) else "cpu"
    paddle.set_device(device)
    return device
