"""The M model fits behind every model-based estimate (main fit + K bootstrap refits), planned once.

`FitPlan.fit` hands all M (rows, seed) pairs to one call of `fqe.fit_fqe_ensemble` or
`fqe.fit_reward_model_ensemble`, which train the M models together as one batched ensemble.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from reagent_recsys.evaluation.fqe import FittedQ, refit_on_resamples

# fit(row_sets, seeds, init, budget) -> one fitted model per (rows, seed); budget = FQE iterations or epochs.
EnsembleFit = Callable[[list[np.ndarray], list[int], "FittedQ | None", int], list[FittedQ]]


@dataclass(frozen=True)
class FitPlan:
    """Main fit on every train row (seed `seed`) and K refits on bootstrap resamples of whole train episodes.

    refit_fraction 1: the refits are cold, full-budget fits, so all M = K + 1 models are fitted together;
    below 1: the refits are warm-started from the main fit with that fraction of the budget (at least 1).
    Deterministic per (episodes, refits, seed): `fqe.refit_on_resamples` draws the resamples and seeds.
    """

    refits: int
    refit_fraction: float
    seed: int

    def refit_rows(self, episode_key: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
        """The K refits' (rows, seed): `refit_on_resamples`' resamples and seeds, collected instead of fitted."""
        plan = refit_on_resamples(lambda rows, seed: (rows, seed), episode_key, self.refits, self.seed)
        return [rows for rows, _ in plan], [seed for _, seed in plan]

    def fit(self, fit: EnsembleFit, episode_key: np.ndarray, budget: int) -> list[FittedQ]:
        """[main fit, refit 1, ..., refit K] with `fit(row_sets, seeds, init, budget)`."""
        every_row = np.arange(len(episode_key))
        rows, seeds = self.refit_rows(episode_key)
        if self.refit_fraction >= 1:
            return fit([every_row, *rows], [self.seed, *seeds], None, budget)
        main = fit([every_row], [self.seed], None, budget)[0]
        if not rows:
            return [main]
        return [main, *fit(rows, seeds, main, max(1, round(budget * self.refit_fraction)))]
