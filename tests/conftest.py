"""Two emulated CPU devices for the whole suite, so every jitted step also runs sharded (set before jax loads)."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=2"]).strip()
