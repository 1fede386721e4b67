"""`ernie-cls bench robustness`: test accuracy under each kind of text noise at fixed rates, per model and format.

    artifacts (e.g. plain=runs/waimai-full robust=runs/robust-full) x formats (FP32, INT8 as served)
    x noise kinds (training/noise.py) x rates -> accuracy on the artifact's own held-out split
    -> JSON + Markdown table + PNG; targets: robust model's drop under 10 % mixed noise <= half the plain model's,
       at <= 0.5 pt clean accuracy cost

Noise is seeded per (draw, kind, rate, text), so every model sees exactly the same noisy texts. With --draws K each
noisy condition is measured on K independent noise draws and reported as their mean (the per-draw accuracies are
kept): at 10 % noise the models differ by tenths of a point, about what one draw's luck moves.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

from bench.config import RobustnessConfig
from ernie_cls.artifact import verify_artifact
from ernie_cls.errors import ConfigError
from ernie_cls.machine import usable_cores
from ernie_cls.runtime import load_backend, load_tokenizer, logits_in_batches
from release.verify import VerifyConfig, labelled_data
from training.data import load_examples
from training.noise import HomophoneTable, check_noise_kinds, noisy


def run_robustness(cfg: RobustnessConfig, command: str | None = None) -> dict:

    check_noise_kinds(cfg.kinds)  # before any model loads
    if cfg.draws < 1:
        raise ConfigError(f"--draws is {cfg.draws}.", "give at least 1 (10 for the target comparison).")
    started = time.perf_counter()
    all_texts = [e.text for e in load_examples(cfg.data, cfg.text_col, cfg.label_col)[0]]
    homophones = HomophoneTable.from_texts(all_texts)
    rows: list[dict] = []
    evaluated_on: dict[str, dict] = {}  # per artifact: which rows of --data it was measured on
    for name, path in cfg.artifacts.items():
        artifact = verify_artifact(path)
        data = labelled_data(VerifyConfig(path, cfg.data, cfg.text_col, cfg.label_col), artifact)
        assert data is not None
        texts_sha256 = hashlib.sha256("\n".join(data["texts"]).encode("utf-8", "surrogatepass")).hexdigest()
        evaluated_on[name] = {"split": data["split"], "examples": len(data["texts"]), "texts_sha256": texts_sha256}
        tokenizer = load_tokenizer(artifact)
        runners = {
            f: load_backend(artifact, f, usable_cores()).infer for f in cfg.formats if f in artifact.spec.formats
        }
        conditions = [("clean", 0.0)] + [(k, r) for k in cfg.kinds for r in cfg.rates]
        for kind, rate in conditions:
            per_draw: dict[str, list[float]] = {fmt: [] for fmt in runners}
            for draw in range(1 if kind == "clean" else cfg.draws):
                texts = noisy_texts(data["texts"], kind, rate, cfg.seed, draw, homophones)
                ids = tokenizer.encode_ids(texts)  # once per condition and draw, shared by the formats
                for fmt, run in runners.items():
                    correct = logits_in_batches(run, tokenizer, ids).argmax(1) == data["labels"]
                    per_draw[fmt].append(float(correct.mean()))
            for fmt, accuracies in per_draw.items():
                rows.append({
                    "model": name, "format": fmt, "noise": kind, "rate": rate,
                    "accuracy": sum(accuracies) / len(accuracies), "draws": accuracies,
                })  # fmt: skip
    # plain vs robust is a paired comparison: only on the same texts (models split with other seeds or sizes hold out
    # other rows of the same file).
    same_texts = len({e["texts_sha256"] for e in evaluated_on.values()}) == 1
    report = {
        "command": command,
        "data": {"path": cfg.data, "evaluated_on": evaluated_on},
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "targets": _targets(rows, cfg) if same_texts else {},
    }
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    out.with_suffix(".md").write_text(_table(rows), encoding="utf-8")
    _plot(rows, out.with_suffix(".png"))
    return report


def noisy_texts(
    texts: list[str], kind: str, rate: float, seed: int, draw: int, homophones: HomophoneTable
) -> list[str]:
    """The texts under one noise condition; draw 0 is the historical single draw, so old results reproduce."""
    if kind == "clean":
        return texts
    prefix = f"{seed}" if draw == 0 else f"{seed}.{draw}"
    return [noisy(t, kind, rate, random.Random(f"{prefix}-{kind}-{rate}-{i}"), homophones) for i, t in enumerate(texts)]


def _key(row: dict) -> tuple[str, str, str, float]:
    return row["model"], row["format"], row["noise"], row["rate"]


def _acc(rows: list[dict], model: str, fmt: str, noise: str, rate: float) -> float | None:
    return next((r["accuracy"] for r in rows if _key(r) == (model, fmt, noise, rate)), None)


def _targets(rows: list[dict], cfg: RobustnessConfig) -> dict:
    """plain vs robust (the first two artifacts), per format, at 10 % mixed noise (means over the draws)."""
    names = list(cfg.artifacts)
    if len(names) < 2 or 0.1 not in cfg.rates or "mixed" not in cfg.kinds:
        return {}
    plain, robust = names[:2]
    by_key = {_key(r): r for r in rows}
    targets = {}
    for fmt in cfg.formats:
        keys = [(m, fmt, n, r) for m in (plain, robust) for n, r in (("clean", 0.0), ("mixed", 0.1))]
        if not all(k in by_key for k in keys):
            continue
        plain_clean_row, plain_noisy_row, robust_clean_row, robust_noisy_row = (by_key[k] for k in keys)
        plain_clean, plain_noisy = plain_clean_row["accuracy"], plain_noisy_row["accuracy"]
        robust_clean, robust_noisy = robust_clean_row["accuracy"], robust_noisy_row["accuracy"]
        plain_drop, robust_drop = plain_clean - plain_noisy, robust_clean - robust_noisy
        paired_draws = zip(plain_noisy_row["draws"], robust_noisy_row["draws"], strict=True)
        targets[fmt] = {
            "plain_drop": round(plain_drop, 4),
            "robust_drop": round(robust_drop, 4),
            "drop_ratio": round(robust_drop / plain_drop, 3) if plain_drop > 0 else None,
            "drop_ratio_per_draw": [
                round((robust_clean - r) / (plain_clean - p), 3) if plain_clean > p else None for p, r in paired_draws
            ],
            "halves_the_drop": robust_drop <= plain_drop / 2,
            "clean_cost_pt": round((plain_clean - robust_clean) * 100, 2),
            "clean_cost_within_0.5pt": plain_clean - robust_clean <= 0.005,
        }
    return targets


def _table(rows: list[dict]) -> str:
    columns = sorted({(r["model"], r["format"]) for r in rows})
    conditions = list(dict.fromkeys((r["noise"], r["rate"]) for r in rows))
    head = "| noise | rate | " + " | ".join(f"{m} {f}" for m, f in columns) + " |"
    lines = [head, "|" + "---|" * (2 + len(columns))]
    for noise, rate in conditions:
        cells = [_acc(rows, m, f, noise, rate) for m, f in columns]
        lines.append(
            f"| {noise} | {rate:.0%} | " + " | ".join("" if c is None else f"{c * 100:.2f} %" for c in cells) + " |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in dict.fromkeys(r["noise"] for r in rows) if k != "clean"]
    columns = sorted({(r["model"], r["format"]) for r in rows})
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3.4), sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for i, (model, fmt) in enumerate(columns):
            rates = [0.0, *sorted({r["rate"] for r in rows if r["noise"] == kind})]
            accs = [_acc(rows, model, fmt, "clean" if r == 0 else kind, r) for r in rates]
            style = "-" if "fp32" in fmt else "--"
            ax.plot([r * 100 for r in rates], [100 * (a or 0.0) for a in accs], style, marker="o", color=f"C{i // 2}",
                    label=f"{model} {fmt}")  # fmt: skip
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("noise rate (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
