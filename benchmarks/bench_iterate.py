"""workflow.iterate on sweet_bitter: K rounds of the closed loop from the uniform random policy.

    .venv/bin/python benchmarks/bench_iterate.py [--rounds 3] [--episodes 20000] [--epsilon 0.1] [--out DIR]

Runs sample_configs/sweet_bitter.yaml's pipeline settings in the loop (the server as a child process, simulated
users over loopback HTTP) and prints, per round, the true returns (simulator), the candidate's CPE estimate with
its interval and whether it was promoted. Target: the incumbent's true return >= 200 within 3 rounds with
<= 20k episodes per round (the uniform random policy: ~99.8).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reagent_recsys.config import load_config  # noqa: E402
from workflow.iterate import iterate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=20_000)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--config", default=str(ROOT / "sample_configs" / "sweet_bitter.yaml"))
    parser.add_argument("--out", default="/tmp/bench_iterate")
    args = parser.parse_args()
    config = load_config(args.config, [f"output_dir={args.out}", f"iterate.rounds={args.rounds}",
                                       f"iterate.episodes_per_round={args.episodes}",
                                       f"iterate.epsilon={args.epsilon}"])
    started = time.perf_counter()
    result = iterate(config)
    import json

    report = json.loads(Path(result["report"]).read_text())
    print(f"\n{args.config}, {args.episodes} episodes/round, epsilon {args.epsilon}; "
          f"{time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f}\n")
    print(f"{'round':>5s} {'served (explor.)':>16s} {'incumbent':>10s} {'candidate':>10s} "
          f"{'estimate [95%]':>26s} {'promoted':>9s}")
    for r in report["rounds"]:
        c = r["candidate"]
        print(f"{r['round']:5d} {r['served']['true_return_with_exploration']['mean']:16.1f} "
              f"{r['served']['incumbent_true_return']:10.1f} {c['true_return']:10.1f} "
              f"{c['estimator']:>4s} {c['estimate']:6.1f} [{c['lower']:6.1f}, {c['upper']:6.1f}] "
              f"{'yes' if r['promoted'] else 'no':>9s}")
    print(f"\nfinal incumbent: {report['incumbent']['policy']}, true return {report['incumbent']['true_return']:.1f}")


if __name__ == "__main__":
    main()
