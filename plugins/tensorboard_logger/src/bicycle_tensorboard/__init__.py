"""TensorBoard logging for bicycle through the training-observer hooks, with a dependency-free writer."""
from bicycle_tensorboard.events import EventFileWriter, Scalar, read_events

__all__ = ["EventFileWriter", "Scalar", "read_events"]
