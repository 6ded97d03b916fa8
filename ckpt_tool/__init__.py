"""ckpt-tool: list, verify and export TensorFlow and Keras weights."""

__version__ = "0.1.0"
