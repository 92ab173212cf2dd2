"""peclr_jax: self-supervised pretraining of hand-pose encoders (SimCLR, PeCLR, relative) in JAX/Flax."""

__version__ = "0.1.0"
