"""A per-step progress bar for sampling, fed from inside the compiled sampler.

``report_step`` is what the runner passes as ``sampling.sample_examples(..., progress_fn=...)``:
one module-level function, so the compiled programs never change with it. Inside a ``StepBar``
context it advances that bar (one tick per sampler step of the current chunk); outside one it does
nothing. A sharded program reports each step once per device; the bar keeps the furthest step.
"""

from __future__ import annotations

import math

import jax
from tqdm import tqdm

_active: "StepBar | None" = None


def report_step(i) -> None:
  """Host callback: step i of the current chunk has started."""
  if _active is not None:
    _active.step(int(i))


class StepBar:
  """tqdm over num_chunks x num_steps sampler steps; ``update`` (called per finished chunk by
  ``sharding.draw``) moves on to the next chunk."""

  def __init__(self, *, num: int, batch_size: int, num_steps: int, desc: str = "sample",
               enabled: bool = True):
    self.num_steps = num_steps
    self.base = 0
    self.bar = tqdm(total=math.ceil(num / min(batch_size, num)) * num_steps, desc=desc,
                    unit="step", dynamic_ncols=True,
                    disable=not enabled or jax.process_index() != 0)

  def step(self, i: int) -> None:
    self._advance(self.base + min(i, self.num_steps - 1) + 1)

  def update(self, _num_examples: int) -> None:
    self.base += self.num_steps
    self._advance(self.base)

  def _advance(self, target: int) -> None:
    if target > self.bar.n:
      self.bar.update(target - self.bar.n)

  def __enter__(self) -> "StepBar":
    global _active
    _active = self
    return self

  def __exit__(self, *exc) -> None:
    global _active
    _active = None
    self.bar.close()
