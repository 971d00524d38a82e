"""The bootstrap machinery: resample counts, chunking, and coverage at about the nominal rate."""

from __future__ import annotations

import numpy as np
import pytest

from reagent_recsys.evaluation import BanditData, BootstrapSpec, inverse_propensity_score
from reagent_recsys.evaluation import bootstrap as bootstrap_module
from reagent_recsys.evaluation.bootstrap import bootstrap_counts, bootstrap_estimate, weighted_mean
from reagent_recsys.evaluation.synthetic import make_bandit_problem


def test_counts_are_multinomial_resamples():
    counts = bootstrap_counts(50, 400, np.random.default_rng(0))
    assert counts.shape == (400, 50)
    assert (counts.sum(axis=1) == 50).all()
    assert counts.mean() == pytest.approx(1.0)
    assert counts.var() == pytest.approx(1 - 1 / 50, rel=0.1)  # Binomial(n, 1/n) variance


def test_chunking_does_not_change_the_resamples(monkeypatch):
    terms = np.random.default_rng(1).normal(size=300)
    spec = BootstrapSpec(samples=50, seed=9)
    whole = bootstrap_estimate("m", weighted_mean(terms), weighted_mean(np.ones(300)), 300, spec)
    monkeypatch.setattr(bootstrap_module, "_MAX_CHUNK_ENTRIES", 300 * 7)  # chunks of 7 resamples
    chunked = bootstrap_estimate("m", weighted_mean(terms), weighted_mean(np.ones(300)), 300, spec)
    assert whole == chunked


def test_intervals_cover_the_truth_at_about_the_nominal_rate():
    spec = BootstrapSpec(samples=200, confidence=0.9, seed=0)
    trials = 120
    covered = 0
    for trial in range(trials):
        problem = make_bandit_problem(300, seed=1000 + trial)
        data = BanditData(problem.logged_action, problem.logged_propensity, problem.reward, problem.target_probs)
        est = inverse_propensity_score(data, BootstrapSpec(spec.samples, spec.confidence, seed=trial))
        covered += est.lower <= problem.true_value <= est.upper
    rate = covered / trials
    # Binomial(120, 0.9) has sd 0.027: [0.80, 0.97] is about -3.6 / +2.6 sd.
    assert 0.80 <= rate <= 0.97, rate


def test_spec_rejects_bad_settings():
    with pytest.raises(ValueError, match="samples must be >= 20"):
        BootstrapSpec(samples=5)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        BootstrapSpec(confidence=1.0)


def test_settings_come_from_the_evaluation_config(tmp_path):
    import inspect

    from reagent_recsys.config import ConfigError, EvaluationConfig, load_config
    from reagent_recsys.evaluation import fit_fqe, fqe_settings

    config = EvaluationConfig(bootstrap_samples=300, confidence_level=0.9)
    assert BootstrapSpec.from_config(config, seed=4) == BootstrapSpec(samples=300, confidence=0.9, seed=4)
    assert set(fqe_settings(config)) <= set(inspect.signature(fit_fqe).parameters)
    path = tmp_path / "run.yaml"
    path.write_text("output_dir: out\n")
    with pytest.raises(ConfigError, match="evaluation.bootstrap_samples"):
        load_config(path, ["evaluation.bootstrap_samples=5"])


def test_interval_is_the_percentile_interval_of_the_resampled_statistic():
    terms = np.random.default_rng(2).exponential(size=80)
    spec = BootstrapSpec(samples=100, confidence=0.8, seed=5)
    est = bootstrap_estimate("m", weighted_mean(terms), weighted_mean(np.ones(80)), 80, spec)
    draws = np.concatenate([counts @ terms / 80 for counts in bootstrap_module.iter_bootstrap_counts(80, spec)])
    assert (est.lower, est.upper) == pytest.approx(tuple(np.quantile(draws, [0.1, 0.9])))
    assert est.value == pytest.approx(terms.mean())
