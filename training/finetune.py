"""Fine-tune ERNIE for classification.

    TrainConfig (config.py) -> load data + split (data.py) -> model & tokenizer (modeling.build_model)
    -> tokenise once (batching.py) -> masked-LM pretraining for scratch models (pretrain.py)
    -> the loop (loop.py: length-bucketed batches, AdamW, warmup + linear decay, dev evaluation, early stop)
    -> best dev macro-F1 saved atomically to <output>/best (checkpoint.py) -> test metrics -> metrics.json

A checkpoint directory (``<output>/best``) holds everything needed to reload it: the paddlenlp model
(``save_pretrained``), the tokenizer files, ``label_map.json``, ``training_config.json`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ernie_cls.errors import ConfigError
from training import baseline, ngrams
from training.batching import Encoded, batches_per_epoch, encode
from training.budget import (
    EVAL_FORWARD_SHARE,
    OVERRUN_ALLOWED,
    SCRATCH_MAX_SEQ_LEN,
    SEQ_LEN_RANGE,
    BudgetPlan,
    apply_plan,
    choose_max_seq_len,
    explain_max_seq_len,
    mlm_deadline,
    plan_budget,
    probe_seconds_per_step,
    replan_fine_tuning,
    robustness_passes,
    with_recipe,
    without_budget,
)
from training.checkpoint import (
    BEST_DIR,
    METRICS_FILE,
    TRAINING_CONFIG_FILE,
    prepare_output,
    save_checkpoint,
    saved_records,
)
from training.config import TrainConfig, check_batch_tokens
from training.data import (
    LabelMap,
    Splits,
    check_known_labels,
    check_trainable,
    load_examples,
    stratified_split,
)
from training.distributed import barrier, init_if_launched, rank_and_world
from training.loop import environment, evaluate_encoded, fit, predict_logits, select_device, set_seed
from training.modeling import ModelSource, build_model, load_checkpoint, parse_base_model
from training.noise import HomophoneTable
from training.pretrain import PretrainConfig, pretrain_mlm
from training.pretrain import probe_seconds_per_step as probe_mlm_seconds_per_step

log = logging.getLogger(__name__)
DEV_SEEN_NOTE = (
    "optimistic: the n-gram branch was refitted on train+dev after dev chose its share; ngrams.dev_by_weight holds "
    "dev figures of the branch fitted on train alone"
)


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


def train(cfg: TrainConfig) -> dict:
    """Run a full fine-tune; returns the metrics written to ``<output>/metrics.json``."""
    cfg.validate()
    out = prepare_output(cfg)
    splits, label_map, provenance = load_splits(cfg)
    log.info(
        "train %d / dev %d / test %d examples, labels %s",
        *map(len, (splits.train, splits.dev, splits.test)),
        label_map.labels,
    )
    use_amp = _amp(cfg, select_device(cfg.device))
    init_if_launched()
    set_seed(cfg.seed)
    t_wall = time.perf_counter()
    source = parse_base_model(cfg.base_model)
    if cfg.max_seq_len is None:
        lengths = [len(e.text) for e in splits.train]  # Example.text is normalised
        ceiling = SCRATCH_MAX_SEQ_LEN if source.kind == "scratch" else SEQ_LEN_RANGE[1]
        chosen = choose_max_seq_len(lengths, ceiling)
        cfg = replace(cfg, max_seq_len=chosen)
        log.info(explain_max_seq_len(lengths, chosen))
        check_batch_tokens(cfg.batch_tokens, chosen, "max_seq_len (chosen from the training texts)")
    model, tokenizer = _build(cfg, source, label_map, splits)
    train_data = encode(splits.train, tokenizer, label_map)
    if cfg.teacher and cfg.teacher.lower() == BASELINE_TEACHER:
        train_data.teacher_logits = baseline.out_of_fold_logits(splits.train, list(label_map.labels), seed=cfg.seed)
        log.info("distillation: the baseline scored %d training texts out of fold", len(splits.train))
    elif cfg.teacher:
        train_data.teacher_logits = teacher_logits(cfg.teacher, label_map, train_data.texts)
    dev_data = encode(splits.dev, tokenizer, label_map)
    test_data = encode(splits.test, tokenizer, label_map) if splits.test else None
    rank0 = rank_and_world()[0] == 0  # fits and attaches the n-gram branch; the others would read best/ mid-swap
    head = _fit_ngrams(model, tokenizer, train_data, len(label_map)) if cfg.ngrams and rank0 else None
    cfg, plan, pretrain_record, stop_at = _stages(cfg, source, model, tokenizer, train_data, len(dev_data.ids), t_wall)
    lr = cfg.learning_rate or (3e-4 if source.kind == "scratch" else 5e-5)
    config_record = {**asdict(cfg), "learning_rate": lr, "base_model_kind": source.kind}

    def save_best(dev_metrics: dict) -> None:
        extra = {TRAINING_CONFIG_FILE: config_record, METRICS_FILE: {"dev": dev_metrics}}
        save_checkpoint(model, tokenizer, label_map, extra, out / BEST_DIR)

    result = fit(model, tokenizer, label_map, train_data, dev_data, cfg, lr, save_best, use_amp, stop_at=stop_at)
    barrier()  # rank 0 has written best/ before any rank reads it
    refit = test_data is not None  # like the baseline: on train+dev once dev has chosen, when test rows judge both
    ngram_record = _attach_ngrams(out / BEST_DIR, head, train_data, dev_data, refit) if head and rank0 else None
    barrier()
    wall = time.perf_counter() - t_wall
    metrics = _final_metrics(out, tokenizer, label_map, dev_data, test_data, result)
    if (ngram_record or {}).get("fitted_on") == "train+dev":
        metrics["dev"]["note"] = DEV_SEEN_NOTE
    metrics.update(
        ngrams=ngram_record,
        pretrain=pretrain_record,
        time_budget={
            **asdict(plan),
            "masked_lm_samples_run": (pretrain_record or {}).get("samples", 0),
            "fine_tune_steps_run": result.steps,
        }
        if plan is not None
        else None,
        wall_seconds=round(wall, 1),
        environment=environment(),
        provenance={**provenance, "base_model": cfg.base_model},
    )
    if cfg.baseline and rank_and_world()[0] == 0:
        _compare_with_baseline(metrics, splits)
    _write_metrics(out, metrics)
    return metrics


def _stages(
    cfg: TrainConfig, source: ModelSource, model, tokenizer, train_data: Encoded, dev_size: int, t_wall: float
) -> tuple[TrainConfig, BudgetPlan | None, dict | None, float | None]:
    """Size the stages, run masked-LM (scratch models; a planned stage stops at its share of the budget), then
    fit the fine-tuning to the time actually left. Returns (resolved config, plan or None, masked-LM record, the
    backstop for fine-tuning or None). Stages the user sized are never cut."""
    requested, scratch = cfg, source.kind == "scratch"
    cfg, plan = _size_stages(cfg, scratch, model, tokenizer, train_data, dev_size)
    if cfg.pretrain_homophones and not cfg.pretrain_epochs:
        raise ConfigError(
            "--pretrain-homophones changes the masked-LM stage, which this run does not have.",
            "Add --pretrain-epochs N (masked-LM is for scratch:<size> models).",
        )
    planned_mlm = plan is not None and requested.pretrain_epochs is None
    mlm_stop = mlm_deadline(plan, time.perf_counter()) if planned_mlm and plan is not None else None
    pretrain_record = _pretrain(cfg, source, model, tokenizer, train_data, mlm_stop) if cfg.pretrain_epochs else None
    if plan is None or requested.epochs is not None or requested.max_steps:
        return cfg, plan, pretrain_record, None
    left = t_wall + plan.budget_seconds - time.perf_counter()
    plan = replan_fine_tuning(requested, plan, scratch, left)
    cfg = replace(cfg, epochs=plan.epochs, max_steps=plan.fine_tune_steps)
    steps = cfg.max_steps or plan.epochs * plan.steps_per_epoch
    log.info("fine-tuning: %d step(s) in the %.1f min left", steps, left / 60)
    # the backstop: the budget's end with some slack, never before the planned fine-tuning could have finished
    planned_s = steps * plan.seconds_per_step * (1 + EVAL_FORWARD_SHARE * plan.dev_batches / plan.eval_every)
    stop_at = max(t_wall + plan.budget_seconds * OVERRUN_ALLOWED, time.perf_counter() + planned_s * OVERRUN_ALLOWED)
    return cfg, plan, pretrain_record, stop_at


def _size_stages(
    cfg: TrainConfig, scratch: bool, model, tokenizer, train_data: Encoded, dev_size: int
) -> tuple[TrainConfig, BudgetPlan | None]:
    """Resolve the options left auto: from --time-budget and a probe of this machine's speed, or the plain
    defaults with --time-budget 0 (training/budget.py)."""
    auto = cfg.epochs is None or (scratch and cfg.pretrain_epochs is None)
    if auto and cfg.time_budget > 0 and rank_and_world()[1] > 1:  # each rank would measure its own speed
        log.warning("--time-budget is not used with several processes: give --epochs and --pretrain-epochs")
        return without_budget(cfg), None
    if cfg.time_budget <= 0 or not auto:
        return (without_budget(cfg) if cfg.time_budget <= 0 else with_recipe(cfg, scratch)), None
    step_s = probe_seconds_per_step(model, tokenizer, train_data, cfg.batch_size, cfg.batch_tokens)
    step_s *= robustness_passes(cfg)
    mlm_step_s = (
        probe_mlm_seconds_per_step(model.config, tokenizer, train_data.ids, cfg.batch_size, cfg.batch_tokens)
        if scratch and cfg.pretrain_epochs is None
        else step_s
    )
    lengths = [len(x) for x in train_data.ids]
    steps = batches_per_epoch(lengths, cfg.batch_size, cfg.batch_tokens)
    plan = plan_budget(cfg, scratch, steps, -(-dev_size // 64), step_s, mlm_step_s)
    log.info("%s", plan.describe())
    return apply_plan(cfg, plan, scratch), plan


def _fit_ngrams(model, tokenizer, train_data: Encoded, classes: int) -> ngrams.NgramHead | None:
    """The branch fitted on the training rows, or None; a failure (e.g. MemoryError) costs the branch, not the run."""
    special = (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id)
    try:
        return ngrams.fit_head(train_data.ids, train_data.labels, classes, int(model.config.vocab_size), special)
    except Exception as err:
        log.warning("n-gram branch left out: its fit failed (%s: %s)", type(err).__name__, err)
        return None


def _attach_ngrams(best: Path, head: ngrams.NgramHead, train: Encoded, dev: Encoded, refit: bool) -> dict | None:
    """Choose the n-gram branch's weight on dev for the saved best checkpoint (a membership-inference check on
    training rows bounds it) and, unless the transformer alone is chosen, rewrite the checkpoint with the branch in
    its graph, refitted on train+dev first when `refit`. Returns the record; a failure costs the branch (logged),
    never the trained model."""
    try:
        from training.ngram_model import with_ngrams

        model, tokenizer, label_map = load_checkpoint(best)

        def scored(ids: list[list[int]], gold: np.ndarray) -> ngrams.Scored:
            return ngrams.Scored(predict_logits(model, tokenizer, ids), head.logits(ids), gold)

        rows = random.Random(0).sample(range(len(train.ids)), min(len(train.ids), ngrams.MEMBERSHIP_ROWS))
        members = scored([train.ids[i] for i in rows], train.labels[rows])
        weight, choice = ngrams.choose_weight(scored(dev.ids, dev.labels), members)
        refitted = _refit_ngrams(head, train, dev) if refit and weight < 1 else None
        head = refitted or head
        if weight < 1:
            save_checkpoint(with_ngrams(model, head, weight), tokenizer, label_map, saved_records(best), best)
    except Exception as err:  # e.g. MemoryError on a huge dev split: the checkpoint as trained stays in place
        log.warning("n-gram branch left out (%s: %s); best/ is the transformer alone", type(err).__name__, err)
        return None
    log.info(
        "n-gram branch: transformer weight %.1f chosen on dev (%s; dev gain confidence %s, needed %.2f)",
        weight, choice["by_weight"][str(weight)], choice["gain_confidence"], ngrams.GAIN_CONFIDENCE,
    )  # fmt: skip
    return {
        "transformer_weight": weight,
        "in_model": weight < 1,
        "dev_by_weight": choice["by_weight"],
        "membership_bound": ngrams.ADVANTAGE_BOUND,
        "membership_ceiling": choice["ceiling"],
        "attack_noise_level": choice["attack_noise_level"],
        "dev_gain_confidence": choice["gain_confidence"],  # bootstrap share of dev resamples the branch won
        # dev chose the share with the branch fitted on train; refitted on train+dev, the dev figures are optimistic
        "fitted_on": head.fitted_on if weight < 1 else None,
        "buckets": head.buckets,
        "fit_seconds": head.fit_seconds,
    }


def _refit_ngrams(head: ngrams.NgramHead, train: Encoded, dev: Encoded) -> ngrams.NgramHead | None:
    """The branch refitted on train+dev, or None: a failure here keeps the branch dev chose (fitted on train)."""
    try:
        return ngrams.refit(head, train.ids + dev.ids, np.r_[train.labels, dev.labels])
    except Exception as err:  # e.g. MemoryError
        log.warning(
            "n-gram branch kept as fitted on train: its refit on train+dev failed (%s: %s)", type(err).__name__, err
        )
        return None


def _compare_with_baseline(metrics: dict, splits: Splits) -> None:
    """The TF-IDF baseline on the same split, into `metrics`; a failure there costs the comparison, not the run."""
    try:
        metrics["baseline"] = baseline.on_splits(splits)
    except Exception as err:  # e.g. MemoryError on a very large corpus: the model is trained and saved already
        log.warning(
            "the TF-IDF baseline could not be fitted (%s: %s); metrics.json has no comparison", type(err).__name__, err
        )
        return
    metrics["baseline_verdict"] = baseline.verdict(metrics, metrics["baseline"])
    baseline.warn_if_not_beaten(metrics, metrics["baseline"], metrics["baseline_verdict"])


def _amp(cfg: TrainConfig, device: str) -> bool:
    use_amp = cfg.amp if cfg.amp is not None else device == "gpu"
    if use_amp and device != "gpu":
        raise ConfigError(
            "--amp (float16 mixed precision with loss scaling) needs a GPU; this run is on the CPU.",
            "Drop --amp on the CPU (it is on by default on a GPU), or train with --device gpu.",
        )
    return use_amp


def _build(cfg: TrainConfig, source: ModelSource, label_map: LabelMap, splits: Splits):
    assert cfg.max_seq_len is not None  # resolved by train()
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
    return model, tokenizer


def _pretrain(
    cfg: TrainConfig, source: ModelSource, model, tokenizer, train_data: Encoded, stop_at: float | None = None
) -> dict:
    """Masked-LM pretraining on the training texts (scratch models); the encoder weights go into `model`."""
    if source.kind != "scratch":
        raise ConfigError(
            "--pretrain-epochs is for scratch:<size> models.", "Pretrained weights need no MLM stage; drop it."
        )

    homophones = (
        HomophoneTable.from_texts(train_data.texts).token_ids(tokenizer.vocab) if cfg.pretrain_homophones else None
    )
    settings = PretrainConfig(
        epochs=cfg.pretrain_epochs or 0,
        batch_size=cfg.batch_size,
        batch_tokens=cfg.batch_tokens,
        homophone_share=cfg.pretrain_homophones,
        seed=cfg.seed,
        progress=cfg.progress,
        stop_at=stop_at,
    )
    pre = pretrain_mlm(model.config, tokenizer, train_data.ids, settings, homophones)
    missing, _ = model.set_state_dict(pre.pop("state"))
    assert all(not k.startswith("ernie.") for k in missing), missing
    log.info("MLM pretraining: %s", pre)
    return pre


def _final_metrics(out: Path, tokenizer, label_map: LabelMap, dev: Encoded, test: Encoded | None, result) -> dict:
    """Dev/test metrics of the checkpoint as saved (reloaded from best/), and the loop's record."""

    best_model, _, _ = load_checkpoint(out / BEST_DIR)
    seconds = result.train_seconds
    return {
        "dev": evaluate_encoded(best_model, tokenizer, dev, label_map),
        "test": evaluate_encoded(best_model, tokenizer, test, label_map) if test else None,
        "best_step": result.best_step,
        "steps": result.steps,
        "train_seconds": round(seconds, 1),
        "train_samples_per_second": round(result.seen / seconds, 2) if seconds else None,
        "history": result.history,
    }


def _write_metrics(out: Path, metrics: dict) -> None:
    import paddle

    if paddle.distributed.get_rank() == 0:
        text = json.dumps(metrics, ensure_ascii=False, indent=2)
        (out / BEST_DIR / METRICS_FILE).write_text(text, encoding="utf-8")
        (out / METRICS_FILE).write_text(text, encoding="utf-8")


BASELINE_TEACHER = "tfidf"  # --teacher tfidf: the reference baseline (training/baseline.py) as the teacher


def teacher_logits(checkpoint: str, label_map: LabelMap, texts: list[str]) -> np.ndarray:
    """The teacher's logits on the training texts, through its own tokenizer (it may have another vocabulary)."""
    if not Path(checkpoint).is_dir():
        raise ConfigError(
            f"--teacher {checkpoint}: no such checkpoint directory.",
            f"Pass a best/ directory written by `ernie-cls train`, or `{BASELINE_TEACHER}` for the TF-IDF baseline.",
        )

    teacher, teacher_tokenizer, teacher_labels = load_checkpoint(checkpoint)
    if list(teacher_labels.labels) != list(label_map.labels):
        raise ConfigError(
            f"The teacher {checkpoint} predicts {teacher_labels.labels}, the student {label_map.labels}.",
            "Distil from a teacher trained on the same labels.",
        )
    ids = teacher_tokenizer.encode_ids(texts, normalized=True)
    log.info("distillation: teacher %s scored %d training texts", checkpoint, len(texts))
    return predict_logits(teacher, teacher_tokenizer, ids)
