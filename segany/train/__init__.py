"""Training and fine-tuning SAM as the paper describes (``segany train CONFIG``).

See :func:`segany.train.trainer.train` for the loop, :mod:`segany.train.model` for the model
and optimizer it trains, :mod:`segany.train.engine` for the simulated interactive prompting,
:mod:`segany.train.losses` for the losses and :mod:`segany.train.seeds` for its random streams.
"""

from .config import TrainConfig, load_train_config
from .model import build_training_model
from .trainer import train

__all__ = ["TrainConfig", "build_training_model", "load_train_config", "train"]
