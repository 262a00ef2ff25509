"""Test setup: 8 forced host devices and a persistent compilation cache shared across runs."""

import os
import pathlib

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

_CACHE = pathlib.Path(os.environ.get("DIFFUSION_JAX_TEST_CACHE",
                                     pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
