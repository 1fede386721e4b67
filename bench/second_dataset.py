"""The second dataset for decisions (issue 18): domain x sentiment, four imbalanced classes, built from the two
shipped corpora, so a default or a recipe is judged on data it was not tuned on (waimai_10k is what the project
tuned on). Kept out of the tests' hot path: `make second-dataset` writes it to runs/data/.

    data/waimai_10k.csv (delivery) + data/ChnSentiCorp_htl_all.csv (hotel)
    -> classes 外卖-差评 / 外卖-好评 / 酒店-差评 / 酒店-好评, subsampled to 3 000 / 1 200 / 700 / 2 400 (seed 42):
       imbalanced (the smallest class is under a quarter of the largest), lengths differ by domain (median 17 vs 84)
    -> runs/data/domain_sentiment.csv (label,review)
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

SOURCES = {"外卖": "data/waimai_10k.csv", "酒店": "data/ChnSentiCorp_htl_all.csv"}
SENTIMENT = {"0": "差评", "1": "好评"}
SIZES = {"外卖-差评": 3000, "外卖-好评": 1200, "酒店-差评": 700, "酒店-好评": 2400}


def build(seed: int = 42) -> list[tuple[str, str]]:
    """(label, review) rows: each class drawn without replacement from its source, then shuffled."""
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    for domain, path in SOURCES.items():
        with open(path, encoding="utf-8") as fh:
            by_label: dict[str, list[str]] = {}
            for row in csv.DictReader(fh):
                if (row.get("review") or "").strip():
                    by_label.setdefault(f"{domain}-{SENTIMENT[row['label']]}", []).append(row["review"])
        for label, texts in sorted(by_label.items()):
            rows += [(label, text) for text in rng.sample(texts, SIZES[label])]
    rng.shuffle(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/data/domain_sentiment.csv")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    rows = build(args.seed)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["label", "review"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.output}")


if __name__ == "__main__":
    main()
