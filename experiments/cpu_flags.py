"""XLA:CPU's convolutions on XLA's own path, for the runner (experiments/main.py) and the tests.

jaxlib 0.10.2 hands XLA:CPU's matrix products, convolutions and reductions to YNNPACK. Keeping only
the matrix products there (``CONVOLUTIONS_ON_XLA``, an XLA:CPU debug option read from XLA_FLAGS
when JAX starts its backends) made the digits U-Net's train step 0.55 s instead of 0.79 s at batch
128 on this project's 2-core CPU; keeping the reductions on YNNPACK as well was slower (0.307 s
against 0.277 s at batch 64). benchmarks/train_throughput.py measures the variants. The option
only concerns the CPU backend: GPU and TPU runs are unaffected.
"""

from __future__ import annotations

import os

CONVOLUTIONS_ON_XLA = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


def use_xla_convolutions(environ=os.environ) -> None:
  """Add ``CONVOLUTIONS_ON_XLA`` to ``environ["XLA_FLAGS"]`` unless the variable already sets the
  option (a user's own setting wins). Call it before JAX's first computation."""
  flags = environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" not in flags:
    environ["XLA_FLAGS"] = f"{flags} {CONVOLUTIONS_ON_XLA}".strip()
