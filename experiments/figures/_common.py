"""Shared by the figure scripts: output paths and matplotlib without a display."""

import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))


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
  print(f"wrote {out / name}.png and .json")


def default_out() -> str:
  return os.environ.get("FIGURES_DIR", "out/figures")
