"""DQN training on the dense training table: networks, the update rule, and the loop."""

from reagent_recsys.training.dqn import BCQ, CQL, DQN, DoubleCQL, DoubleDQN, build_algorithm
from reagent_recsys.training.networks import DQNModel, QNetwork
from reagent_recsys.training.trainer import ModelSpec, Trainer, load_model

__all__ = ["BCQ", "CQL", "DQN", "DQNModel", "DoubleCQL", "DoubleDQN", "ModelSpec", "QNetwork", "Trainer",
           "build_algorithm", "load_model"]
