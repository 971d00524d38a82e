"""A synthetic decision log whose reward function and logging propensities are known exactly.

The world of `sample_configs/decision_log.yaml` (written by ``scripts/make_decision_log.py``): users with an age,
a country and a device open sessions of 1 to `max_steps` decisions spread over `days` days; at each decision a
random candidate set of `min_candidates`..`max_candidates` items (of `num_items`, each with a price and a quality)
is shown in a random position 0-2, and the logging policy picks one item by a softmax of its quality (so every
propensity is exact). The reward is

    mu(x, i) = 1 + quality_i * (1.0 if mobile else 0.3) - 0.8 * price_i * (age - 40) / 15
               + 0.6 * price_i * [country == FR] - 0.1 * position,    r = mu + N(0, noise^2)

and does not depend on earlier decisions (contexts are exogenous), so the true value of any policy pi on a set of
logged contexts is the mean of mu(x_t, pi(x_t)) over them (`policy_value`): that is what a contextual-bandit
estimate (one-step DM/IPS/DR) of pi must recover.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

COUNTRIES = ("DE", "FR", "JP", "US")
DEVICES = ("desktop", "mobile")


@dataclass(frozen=True)
class DecisionLogSpec:
    """Size and randomness of the synthetic log."""

    sessions: int = 3000
    num_items: int = 30
    min_candidates: int = 4
    max_candidates: int = 12
    max_steps: int = 4
    days: int = 10
    start_date: str = "2026-01-01"
    noise: float = 0.5
    temperature: float = 1.0
    seed: int = 0


def item_table(spec: DecisionLogSpec) -> pd.DataFrame:
    """item_id, price in [0, 1], quality ~ N(0, 1); ids item_00, item_01, ..."""
    rng = np.random.default_rng([spec.seed, 1])
    width = len(str(spec.num_items - 1))
    return pd.DataFrame({
        "item_id": [f"item_{i:0{width}d}" for i in range(spec.num_items)],
        "price": rng.random(spec.num_items).round(4),
        "quality": rng.normal(0.0, 1.0, spec.num_items).round(4),
    })


def expected_reward(age: np.ndarray, country: np.ndarray, device: np.ndarray, position: np.ndarray,
                    price: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """mu(x, i) of the module docstring, broadcasting context arrays (N,) or (N, 1) against item arrays."""
    mobile = np.where(np.asarray(device) == "mobile", 1.0, 0.3)
    france = (np.asarray(country) == "FR").astype(np.float64)
    age_z = (np.asarray(age, dtype=np.float64) - 40.0) / 15.0
    return 1.0 + quality * mobile - 0.8 * price * age_z + 0.6 * price * france - 0.1 * np.asarray(position)


def generate(spec: DecisionLogSpec = DecisionLogSpec()) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """(decisions, items, truth): one row per decision, the item table, and the exact values of the logging,
    uniformly random and best-item policies over the logged contexts."""
    rng = np.random.default_rng([spec.seed, 0])
    items = item_table(spec)
    price, quality = items["price"].to_numpy(), items["quality"].to_numpy()  # (I,)
    n_items = spec.num_items
    steps = rng.integers(1, spec.max_steps + 1, spec.sessions)  # (S,)
    session = np.repeat(np.arange(spec.sessions), steps)  # (D,)
    step = np.concatenate([np.arange(k) for k in steps])  # (D,)
    decisions = len(session)
    age = rng.integers(18, 71, spec.sessions)[session]
    country = np.asarray(COUNTRIES)[rng.integers(0, len(COUNTRIES), spec.sessions)][session]
    device = np.asarray(DEVICES)[rng.integers(0, len(DEVICES), spec.sessions)][session]
    day = rng.integers(0, spec.days, spec.sessions)
    second = rng.integers(0, 86_400 - 600, spec.sessions)
    start = np.datetime64(spec.start_date, "s")
    timestamp = start + (day * 86_400 + second)[session].astype("timedelta64[s]") + (step * 30).astype(
        "timedelta64[s]")
    position = rng.integers(0, 3, decisions)

    size = rng.integers(spec.min_candidates, spec.max_candidates + 1, decisions)  # (D,)
    order = np.argsort(rng.random((decisions, n_items)), axis=1)  # (D, I) a random permutation per decision
    rank = np.argsort(order, axis=1)  # (D, I) the item's place in it
    available = rank < size[:, None]  # (D, I) the candidate set

    logits = np.where(available, quality[None, :] / spec.temperature, -np.inf)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)  # (D, I) the logging policy
    chosen = (probs.cumsum(axis=1) > rng.random(decisions)[:, None]).argmax(axis=1)  # (D,)
    mu = expected_reward(age[:, None], country[:, None], device[:, None], position[:, None], price[None, :],
                         quality[None, :])  # (D, I)
    reward = mu[np.arange(decisions), chosen] + rng.normal(0.0, spec.noise, decisions)

    ids = items["item_id"].to_numpy()
    candidates = ["|".join(ids[order[d, : size[d]]]) for d in range(decisions)]
    width = len(str(spec.sessions - 1))
    table = pd.DataFrame({
        "session_id": [f"s{s:0{width}d}" for s in session],
        "step": step,
        "timestamp": pd.to_datetime(timestamp).strftime("%Y-%m-%d %H:%M:%S"),
        "age": age,
        "country": country,
        "device": device,
        "position": position,
        "candidates": candidates,
        "item_id": ids[chosen],
        "propensity": probs[np.arange(decisions), chosen].round(12),
        "reward": reward.round(6),
        "revenue": (np.maximum(reward, 0.0) * price[chosen]).round(6),
    })
    masked = np.where(available, mu, -np.inf)
    truth = {
        "decisions": int(decisions),
        "logging_value": float((probs * np.where(available, mu, 0.0)).sum(axis=1).mean()),
        "random_value": float((np.where(available, mu, 0.0).sum(axis=1) / size).mean()),
        "best_value": float(masked.max(axis=1).mean()),
    }
    return table, items, truth


def policy_value(decisions: pd.DataFrame, items: pd.DataFrame, chosen_items: np.ndarray) -> np.ndarray:
    """(D,) mu(x_t, chosen_t) for `decisions` rows (the generator's columns) and the item ids a policy chose."""
    by_id = items.set_index("item_id")
    price = by_id.loc[chosen_items, "price"].to_numpy()
    quality = by_id.loc[chosen_items, "quality"].to_numpy()
    return expected_reward(decisions["age"].to_numpy(), decisions["country"].to_numpy(),
                           decisions["device"].to_numpy(), decisions["position"].to_numpy(), price, quality)


def write_decision_log(out_dir: str | Path, spec: DecisionLogSpec = DecisionLogSpec()) -> dict[str, str | float]:
    """Write decisions.csv, items.csv and truth.json (values of the reference policies, the spec) to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table, items, truth = generate(spec)
    table.to_csv(out / "decisions.csv", index=False)
    items.to_csv(out / "items.csv", index=False)
    payload = {**truth, "spec": asdict(spec), "reward": __doc__.split("The reward is")[1].split("and does")[0].strip()}
    (out / "truth.json").write_text(json.dumps(payload, indent=2) + "\n")
    return {"decisions_csv": str(out / "decisions.csv"), "items_csv": str(out / "items.csv"), **truth}
