"""Training and fine-tuning SAM as the paper describes (``segany train CONFIG``).

See :func:`segany.train.trainer.train` for the loop, :mod:`segany.train.engine` for the
simulated interactive prompting, :mod:`segany.train.losses` for the losses.
"""

from .config import TrainConfig, load_train_config
from .trainer import build_training_model, train

__all__ = ["TrainConfig", "build_training_model", "load_train_config", "train"]
