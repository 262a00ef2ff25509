"""Shared by the figure scripts: the absl flags they all have, output files, matplotlib without a display.

Every script is ``python experiments/figures/NAME.py [--flags]``; ``--help`` lists its flags and
their defaults. Each writes NAME.png and NAME.json (the numbers behind the figure) to ``--out``.
"""

import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("out", os.environ.get("FIGURES_DIR", "out/figures"),
                    "Directory for the PNG and the JSON of its numbers (default: $FIGURES_DIR, "
                    "else out/figures).")


def run(main) -> None:
  """``app.run(main)`` with the experiments' flag parsing (a ``--workdir`` remembers its config).

  Scripts call ``flags.adopt_module_key_flags(_common)`` so that their --help lists --out.
  """
  from absl import logging

  from experiments import workdir

  def quiet_main(argv):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # no INFO lines from JAX's backend discovery
    return main(argv)

  app.run(quiet_main, flags_parser=workdir.parse_flags)


def int_list(text: str, name: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise app.UsageError(f"--{name} must be comma-separated integers, got {text!r}.") from None
  if not values or min(values) < 1:
    raise app.UsageError(f"--{name} must list integers >= 1, got {text!r}.")
  return values


def float_list(text: str, name: str, count: int | None = None) -> list[float]:
  """A comma-separated flag of numbers >= 0 (``count`` of them, if given), or a usage error."""
  try:
    values = [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    values = None
  if not values or min(values) < 0 or (count is not None and len(values) != count):
    what = f"{count} numbers" if count else "numbers"
    raise app.UsageError(f"--{name} must be comma-separated {what} >= 0, got {text!r}.")
  return values


def pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def write(out_dir, name: str, fig, payload: dict) -> None:
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  fig.savefig(out / f"{name}.png", dpi=110)
  (out / f"{name}.json").write_text(json.dumps(payload, indent=1))
  print(f"Wrote {out / name}.png (figure) and {out / name}.json (its numbers).")

