"""The lecture table's reading of its rows (experiments/figures/lecture_table.py): FD over its
floor, the lecture's qualitative claims checked against the measurements, the markdown table.
Pure functions of the rows (dicts of one family's numbers), so they are tested on their own.
"""

from __future__ import annotations

import math


def fd_ratio(row: dict, space: str) -> float:
  """FD over its floor (NaN where the floor is 0: data whose splits coincide, as mocked data)."""
  floor = row[f"fd_{space}_floor"]
  return row[f"fd_{space}"] / floor if floor > 0 else float("nan")


def claims(rows: dict) -> list[dict]:
  """The lecture's qualitative claims, each checked against the measured rows present."""
  out = []

  def add(claim, holds, measured):
    out.append({"claim": claim, "holds": bool(holds), "measured": measured})

  if "diffusion" in rows and len(rows) > 1:
    d = rows["diffusion"]
    for space in ("features", "pixels"):
      others = {f: r[f"fd_{space}"] for f, r in rows.items() if f != "diffusion"}
      best = min(others, key=others.get)
      # "Tied": FD within one standard deviation of the floor over its splits (every family is
      # scored against the same real images, so the floor and its spread are shared).
      tie = d[f"fd_{space}_floor_std"]
      gap = d[f"fd_{space}"] - others[best]
      add(f"diffusion's sample quality is the best or tied ({space} FD)", gap <= tie,
          f"diffusion {d[f'fd_{space}']:.3g} ({fd_ratio(d, space):.2f}x the floor); best other "
          f"{best} {others[best]:.3g} ({fd_ratio(rows[best], space):.2f}x); tie: within the "
          f"floor's std {tie:.3g}")
  if "pixelcnn" in rows and len(rows) > 1:
    times = {f: r["seconds_per_1000_samples"] for f, r in rows.items()}
    slowest = max(times, key=times.get)
    add("the autoregressive model is the slowest to sample", slowest == "pixelcnn",
        ", ".join(f"{f} {t:.3g} s" for f, t in sorted(times.items(), key=lambda kv: -kv[1]))
        + " per 1,000 samples")
  if "vae" in rows and len(rows) > 1:
    # Training speed as throughput (images per second of training): every family had the same
    # wall time, so "fast to train" is how much data a family gets through in it.
    speed = {f: r["step"] * r["batch_size"] / r["train_seconds"] for f, r in rows.items()
             if r.get("train_seconds")}
    fastest = max(speed, key=speed.get)
    add("the VAE is the fastest to train (images per training second)", fastest == "vae",
        ", ".join(f"{f} {v:,.0f}" for f, v in sorted(speed.items(), key=lambda kv: -kv[1])))
  if "diffusion" in rows and "pixelcnn" in rows:
    d, p = rows["diffusion"].get("bits_per_dim"), rows["pixelcnn"].get("bits_per_dim")
    if d is not None and p is not None:
      add("diffusion's PF-ODE bits/dim is at most the autoregressive model's", d <= p,
          f"diffusion {d:.3f} (upper bound) vs PixelCNN {p:.3f} (exact)")
  return out


def _fmt(value, spec: str) -> str:
  return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else spec.format(value)


def markdown(rows: list[dict], found: list[dict], data: str, minutes: float) -> str:
  lines = [f"# The lecture's table on {data}: every family {minutes:g} minutes of training", "",
           "| family | test bits/dim | bits/dim is | pixel FD / floor | feature FD / floor | "
           "confident | class entropy (bits) | s / 1,000 samples | training (s, steps) | "
           "parameters |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    bpd = _fmt(r.get("bits_per_dim"), "{:.3f}")
    if r.get("bits_per_dim_se") is not None:
      bpd += f" +- {r['bits_per_dim_se']:.3f}"
    if r.get("bits_per_dim_elbo") is not None:
      bpd += f" (ELBO {r['bits_per_dim_elbo']:.3f})"
    if r.get("bits_per_dim_ddpm_bound") is not None:
      bpd += f" (DDPM bound {r['bits_per_dim_ddpm_bound']:.3f})"
    params = f"{r['num_params']:,}"
    if "num_params_generator" in r:
      params += f" (generator {r['num_params_generator']:,})"
    lines.append(
        f"| {r['name']} | {bpd} | {r['likelihood_kind']} | "
        f"{r['fd_pixels']:.3g} / {r['fd_pixels_floor']:.3g} = {fd_ratio(r, 'pixels'):.2f}x | "
        f"{r['fd_features']:.3g} / {r['fd_features_floor']:.3g} = "
        f"{fd_ratio(r, 'features'):.2f}x | "
        f"{_fmt(r.get('confident_fraction'), '{:.1%}')} | "
        f"{_fmt(r.get('class_entropy_bits'), '{:.3f}')} "
        f"(data {_fmt(r.get('class_entropy_bits_floor'), '{:.3f}')}) | "
        f"{r['seconds_per_1000_samples']:.3g} | {_fmt(r.get('train_seconds'), '{:.0f}')}, "
        f"{r['step']:,} | {params} |")
  if found:
    lines += ["", "## The lecture's claims", ""]
    lines += [f"- {'holds' if c['holds'] else 'DOES NOT HOLD'}: {c['claim']}: {c['measured']}."
              for c in found]
  return "\n".join(lines) + "\n"
