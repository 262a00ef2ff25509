"""Test setup: 8 forced host devices and a persistent compilation cache shared across runs."""

import os
import pathlib

# Must be set before JAX initialises its backends (child Pythons inherit them, so a child
# experiments.main and this process compute alike):
# - 8 forced host devices, for the sharded code;
# - cheap code generation: compiling small programs is most of the suite's time, and XLA:CPU's
#   LLVM optimisation is most of that (tests/test_likelihood.py and test_samplers.py took 839 s
#   with it and 732 s without, fresh cache, -n 2 on 2 cores). XLA's own graph passes still run;
# - convolutions on the runner's path (experiments/cpu_flags.py).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
from experiments import cpu_flags  # noqa: E402  (imports nothing from JAX)

cpu_flags.use_xla_convolutions()

import jax  # noqa: E402

_CACHE = pathlib.Path(os.environ.get("DIFFUSION_JAX_TEST_CACHE",
                                     pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
