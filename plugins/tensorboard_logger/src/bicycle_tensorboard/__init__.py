"""TensorBoard logging for bicycle through the training-observer hooks (torch's SummaryWriter)."""
from bicycle_tensorboard.plugin import FOLDER, close_all, writer_for

__all__ = ["FOLDER", "close_all", "writer_for"]
