#!/usr/bin/env python3
"""Write the synthetic decision log of sample_configs/decision_log.yaml (known propensities and reward function).

    python scripts/make_decision_log.py [--out outputs/decision_log_data] [--sessions 3000] [--seed 0]

Writes decisions.csv (one row per decision), items.csv (the item side table) and truth.json (the exact values of
the logging, uniformly random and best-item policies over the logged contexts); see
reagent_recsys/data/decision_log.py for the world and its reward function.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from reagent_recsys.data.decision_log import DecisionLogSpec, write_decision_log  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/decision_log_data", help="Output directory.")
    parser.add_argument("--sessions", type=int, default=DecisionLogSpec.sessions, help="Sessions (1-4 decisions each).")
    parser.add_argument("--seed", type=int, default=0, help="Seed: same seed, same files.")
    args = parser.parse_args(argv)
    summary = write_decision_log(args.out, DecisionLogSpec(sessions=args.sessions, seed=args.seed))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
