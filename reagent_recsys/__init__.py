"""reagent_recsys: a batch (offline) reinforcement-learning data pipeline for recommender systems."""

__version__ = "0.1.0"
