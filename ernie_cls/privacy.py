"""Does the model give away which texts it was trained on? A loss-threshold membership-inference attack.

    served model -> p(true label) on training rows (members) and on held-out rows (non-members)
      -> the attacker says "member" when p >= t; advantage = max over t of (true-positive rate - false-positive rate)

The best threshold's advantage is the two-sample Kolmogorov-Smirnov statistic of the two confidence samples (Yeom
et al., 2018: the advantage of this attack is the model's generalisation gap seen through its confidence). 0 means
the attacker cannot tell members apart; a model that memorised its training rows approaches 1. With finite samples
even a model that memorised nothing shows some advantage: `noise_level` is what two samples of the same
distribution exceed only 5 % of the time, reported next to the measured figure so that a bound is not set below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where it is used: the command line reads MAX_ADVANTAGE before any command runs
    import numpy as np

MAX_ADVANTAGE = 0.15  # `ernie-cls verify` fails a model above this (--max-membership-advantage)


@dataclass(frozen=True)
class MembershipReport:
    advantage: float  # max over thresholds of TPR - FPR
    threshold: float  # the p(true label) where it is reached
    members: int
    non_members: int
    noise_level: float  # KS 5 % critical value for these sample sizes
    member_mean_confidence: float
    non_member_mean_confidence: float


def noise_level(members: int, non_members: int) -> float:
    """The advantage two samples of these sizes from one distribution exceed only 5 % of the time (KS, 5 %)."""
    return 1.358 * math.sqrt((members + non_members) / (members * non_members))


def membership_advantage(members: np.ndarray, non_members: np.ndarray) -> MembershipReport:
    """members / non_members: each row's probability of its true label."""
    import numpy as np

    if len(members) == 0 or len(non_members) == 0:
        raise ValueError("membership_advantage needs rows on both sides")
    thresholds = np.unique(np.concatenate([members, non_members]))
    m, n = np.sort(members), np.sort(non_members)
    # rate of each side at or above every threshold (searchsorted on the sorted samples: O(n log n))
    tpr = 1 - np.searchsorted(m, thresholds, side="left") / len(m)
    fpr = 1 - np.searchsorted(n, thresholds, side="left") / len(n)
    gaps = tpr - fpr
    best = int(np.argmax(gaps))
    return MembershipReport(
        advantage=float(max(0.0, gaps[best])),
        threshold=float(thresholds[best]),
        members=len(m),
        non_members=len(n),
        noise_level=noise_level(len(m), len(n)),
        member_mean_confidence=float(members.mean()),
        non_member_mean_confidence=float(non_members.mean()),
    )
