"""The experiment report's error rates, measured end to end over seeds of the generator's world.

Run from the repo root: ``python bench/experiment.py [seeds] [lift]`` (default 30 seeds, lift
0.15). For each seed the generator writes two days of click logs (2,000 users, 40,000
impressions), once as an A/A world and once with B truly better by ``lift`` (relative CTR);
every impression is logged by serving's inference-log writer under the experiment, its click
stored as a label, and ``report`` judges it as ``mlref experiment report`` does. Printed: the
share of A/A worlds found significant (should be alpha) and of A/B worlds (the power), each
with its exact binomial 95 % interval, and the power the delta-method variance predicts.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from scipy.stats import binomtest, norm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the world-to-log helper lives in tests/

from tests.experiment.test_report import log_experiment, offline_report, world  # noqa: E402


def rate(hits: int, n: int) -> str:
    interval = binomtest(hits, n).proportion_ci(0.95)
    return f"{hits}/{n} = {hits / n:.3f} (95% CI {interval.low:.3f}..{interval.high:.3f})"


def main(seeds: int = 30, lift: float = 0.15) -> None:
    found = {0.0: 0, lift: 0}
    predicted = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for truth in (0.0, lift):
                root = Path(tmp) / f"{seed}-{truth}"
                settings = world(root, truth, seed=100 + seed)
                log_experiment(settings)
                effect = offline_report(settings).effect
                found[truth] += effect.significant
                if truth:
                    se = (effect.high - effect.low) / (2 * norm.ppf(1 - effect.alpha / 2))
                    z = norm.ppf(1 - effect.alpha / 2)
                    predicted.append(norm.sf(z - effect.control * lift / se))
            print(f"seed {seed + 1}/{seeds}: A/A {found[0.0]}, A/B {found[lift]} significant")
    alpha = settings.experiment.alpha
    print(f"A/A false-positive rate at alpha {alpha}: {rate(found[0.0], seeds)}")
    print(f"A/B power for a {lift:.0%} lift: {rate(found[lift], seeds)}")
    print(f"power the delta-method variance predicts: {sum(predicted) / len(predicted):.3f}")


if __name__ == "__main__":
    main(*(int(sys.argv[1]),) if len(sys.argv) > 1 else (), *map(float, sys.argv[2:3]))
