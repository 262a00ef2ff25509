"""Wall time per score evaluation, our samplers against diffusers', each side in its own process.

    python benchmarks/sampler_speed.py --out FILE [--dims 2,16,64] [--nfes 10,100] [--rounds 5]

The same-algorithm pairs (DDIM, DPM-Solver++(2M), ancestral/DDPM, Heun) sample the VP problems of
benchmarks/samplers.py at batch 10,000, driven by the same exact noise prediction of the mixture in
JAX and in torch. Each side lives in its own worker process, pinned to the same CPUs with the same
thread count, so neither library's thread pool competes with the other's (in one process the second
library's times moved by up to 2.5x). The two workers take turns: for every configuration, each
round times a few calls on one side and then the same on the other, back to back, alternating
which goes first; the ratio is the median over rounds of each round's peer-over-ours ratio of best
calls, so slow drift of a shared machine cancels; the rounds go round-robin over the
configurations, so a slow spell of minutes hits one round of many configurations rather than every
round of one. Warm-up calls (our compilation, the peer's first call) are not timed.

The noise prediction is measured in three layouts, the same arithmetic on both sides
(benchmarks/samplers.py LAYOUTS): ``bkd``, the library's per-example mixture score as vmap batches
it ((batch, K, D) intermediates); ``kdb`` (BatchedScore, (K, D, batch)); ``gemm`` (BatchedScore,
the quadratic form expanded into matrix products). The headline ratio for each problem uses the
layout in which the peer is fastest, so the choice never favours us; the JSON also compares each
side in its own fastest layout. The noise prediction alone is timed too (``score_only``, a chain of
dependent evaluations), to show how much of a step it is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import samplers as bench  # noqa: E402  benchmarks/samplers.py: problems, grids, sampler configurations

PAIRS = [("ddim", "ddim"), ("dpm_solver_2m", "dpm_solver_multistep"), ("ancestral", "ddpm"),
         ("heun", "heun")]
LAYOUTS = list(bench.LAYOUTS)
# The noise prediction alone is timed over a chain of this many dependent evaluations (inside one
# compiled loop for us, a Python loop for torch), so a single call's dispatch cost does not dominate.
SCORE_CHAIN = 20
REPLY = "@@reply "  # prefix of a worker's answer lines on stdout
# glibc serves large allocations with fresh mmaps (above a dynamic threshold from 128 KiB) and trims
# freed heap back to the OS, so a torch intermediate of a few MiB can be page-faulted in anew at every
# op. Measured on 2 CPU cores at batch 10,000, the same script back to back: torch's 16-D noise
# prediction took 2.3-3.8 ms with the defaults and 0.5-0.9 ms with the setting below; for XLA the
# difference was within this machine's run-to-run noise. Both workers get a fixed 32 MiB mmap
# threshold (glibc's maximum) and no trimming.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def _pin(threads: int):
  """Both sides get the same CPUs: the first ``threads`` of this process's allowed set."""
  cpus = sorted(os.sched_getaffinity(0))[:threads]
  os.sched_setaffinity(0, cpus)
  return cpus


def _timed(fn, repeats: int) -> list[float]:
  """Wall times of ``repeats`` calls after one warm-up call (which compiles, the first time)."""
  fn()
  walls = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    walls.append(time.perf_counter() - t0)
  return walls


class OursSide:
  """Our samplers on the VP problem of one dimension, in both layouts of the mixture's score."""

  def __init__(self, args):
    import jax
    import jax.random as jr

    from diffusion_jax import analytic, sdes
    from diffusion_jax.sampling import sample_batch

    self.jax, self.jr, self.sample_batch, self.args = jax, jr, sample_batch, args
    self.sde = sdes.VPSDE()
    self.dm = analytic.DiffusedMixture(bench.make_problem(args.dim), self.sde)
    # The layouts must be the same function: relative 1e-4 is 100x the float32 rounding of sums
    # over D <= 64 terms (measured 6e-7 in 64-D, either batched form against the per-example one).
    x = jr.normal(jr.key(0), (1000, args.dim)) + 1.0
    ref = jax.vmap(self.dm.score, (0, None))(x, 0.5)
    for layout in LAYOUTS[1:]:  # the first, bkd, is the reference itself
      fast = jax.vmap(bench.score_in_layout(self.dm, layout), (0, None))(x, 0.5)
      err = float(abs(fast - ref).max() / abs(ref).max())
      if not err < 1e-4:
        raise RuntimeError(f"the {layout} layout differs from DiffusedMixture.score by {err:.1e} (relative)")
    self.x_batch = jr.normal(jr.key(1), (args.num, args.dim))
    self.chain = jax.jit(lambda f, x: jax.lax.fori_loop(
        0, SCORE_CHAIN, lambda i, x: x + 1e-6 * jax.vmap(f, (0, None))(x, 0.5), x))
    self.meta = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}

  def run(self, layout: str, job: str, nfe: int | None, repeats: int):
    jax, jr, args = self.jax, self.jr, self.args
    score_fn = bench.score_in_layout(self.dm, layout)
    if job == "score_only":
      walls = _timed(lambda: jax.block_until_ready(self.chain(score_fn, self.x_batch)), repeats)
      return [w / SCORE_CHAIN for w in walls], SCORE_CHAIN
    sampler, grid, per_step, denoise = bench.SAMPLERS[job]
    ts = bench.GRIDS[grid](self.sde, bench.steps_for(nfe, per_step, denoise), bench.T_MIN_VP)
    seeds = iter(range(repeats + 1))

    def call():
      return jax.block_until_ready(self.sample_batch(
          self.sde, score_fn, sampler, ts, key=jr.key(next(seeds)), num=args.num,
          shape=(args.dim,), denoise_final=denoise))

    used = int(call().nfe.max())
    seeds = iter(range(1, repeats + 2))
    return [w / used for w in _timed(call, repeats)], used


class PeerSide:
  """diffusers' schedulers on the same problem, driven by the same noise prediction in torch."""

  def __init__(self, args):
    import torch

    self.torch, self.args = torch, args
    self.device = bench.torch_device(args.peer_device)
    if self.device == "cpu":
      torch.set_num_threads(args.threads)
    self.gmm = bench.make_problem(args.dim)
    x = torch.randn(1000, args.dim, device=self.device) + 1.0
    ref = bench.torch_eps_fn(self.gmm, self.device, "bkd")(x, 500)
    for layout in LAYOUTS[1:]:
      err = float((bench.torch_eps_fn(self.gmm, self.device, layout)(x, 500) - ref).abs().max()
                  / ref.abs().max())
      if not err < 1e-4:  # the same rounding bound as for ours
        raise RuntimeError(f"torch_eps_fn: the {layout} layout differs from bkd by {err:.1e} (relative)")
    self.x_batch = torch.randn(args.num, args.dim, device=self.device)
    self.sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
    self.meta = {"device": self.device, "torch": torch.__version__,
                 "torch_threads": torch.get_num_threads()}

  def run(self, layout: str, job: str, nfe: int | None, repeats: int):
    args = self.args
    eps_fn = bench.torch_eps_fn(self.gmm, self.device, layout)
    if job == "score_only":
      def chain():
        x = self.x_batch
        for _ in range(SCORE_CHAIN):
          x = x + 1e-6 * eps_fn(x, 500)
        self.sync()
      return [w / SCORE_CHAIN for w in _timed(chain, repeats)], SCORE_CHAIN
    steps = bench.peer_steps(job, nfe)
    used = bench.run_diffusers(job, steps, eps_fn, args.num, args.dim, 0, self.device)[1]
    seeds = iter(range(1, repeats + 2))
    walls = _timed(lambda: bench.run_diffusers(job, steps, eps_fn, args.num, args.dim, next(seeds),
                                               self.device), repeats)
    return [w / used for w in walls], used


def serve(args):
  """A worker: set up one side, then answer timing requests (one JSON line each) until EOF."""
  cpus = _pin(args.threads)
  side = (OursSide if args.serve == "ours" else PeerSide)(args)
  print(REPLY + json.dumps({**side.meta, "cpus": cpus}), flush=True)
  for line in sys.stdin:
    req = json.loads(line)
    walls, used = side.run(req["layout"], req["job"], req["nfe"], req["repeats"])
    print(REPLY + json.dumps({"walls": walls, "nfe": used}), flush=True)


class Worker:
  """The orchestrator's handle on a serving worker process."""

  def __init__(self, args, side: str, dim: int):
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", side, "--dim", str(dim),
           "--num", str(args.num), "--threads", str(args.threads), "--peer-device", args.peer_device]
    self.side = side
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, **MALLOC_ENV})
    self.meta = self._reply()

  def _reply(self) -> dict:
    for line in self.proc.stdout:  # anything else a library prints to stdout is skipped
      if line.startswith(REPLY):
        return json.loads(line[len(REPLY):])
    raise RuntimeError(f"the {self.side} worker exited with code {self.proc.wait()}")

  def request(self, **req) -> dict:
    self.proc.stdin.write(json.dumps(req) + "\n")
    self.proc.stdin.flush()
    return self._reply()

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def measure(args, dim: int, report: dict):
  """Every (layout, job, NFE) of one problem: ``rounds`` back-to-back pairs of requests.

  The rounds go round-robin over the configurations (round 1 of all of them, then round 2, ...), so
  the rounds of one configuration are minutes apart. A worker can fall into a slow state for a
  minute or more (64-D DDIM at 10 NFE took 1.6 ms per NFE in one block of calls and 3.9 in the next,
  the same compiled function in the same process); with the rounds of a configuration back to back,
  all of them could land in one such spell, and the median over rounds could not reject it."""
  ours, peer = Worker(args, "ours", dim), Worker(args, "peer", dim)
  report["workers"][str(dim)] = {"ours": ours.meta, "peer": peer.meta}
  jobs = [("score_only", "score_only", None)] + [(o, p, n) for o, p in PAIRS for n in args.nfes]
  configs = [(layout, *job) for layout in args.layouts for job in jobs]
  results = {c: {"ours": [], "peer": []} for c in configs}
  try:
    for r in range(args.rounds):
      for c in configs:
        layout, ours_job, peer_job, nfe = c
        order = [(ours, ours_job), (peer, peer_job)]
        for worker, job in (order if r % 2 == 0 else order[::-1]):
          results[c][worker.side].append(worker.request(layout=layout, job=job, nfe=nfe,
                                                        repeats=args.repeats))
      print(f"dim={dim}: round {r + 1} of {args.rounds} done", flush=True)
  finally:
    ours.close()
    peer.close()
  for (layout, ours_job, peer_job, nfe), res in results.items():
    o = [x["walls"] for x in res["ours"]]
    p = [x["walls"] for x in res["peer"]]
    # Each round's pair ran back to back, so its ratio of best calls sees the same machine state.
    paired = [min(pw) / min(ow) for ow, pw in zip(o, p)]
    row = {"peer": peer_job, "nfe_ours": res["ours"][0]["nfe"],
           "ours_ms": [[1e3 * w for w in ws] for ws in o], "peer_ms": [[1e3 * w for w in ws] for ws in p],
           "ours_ms_best": 1e3 * float(np.median([min(ws) for ws in o])),
           "peer_ms_best": 1e3 * float(np.median([min(ws) for ws in p])),
           "peer_over_ours": float(np.median(paired)), "paired_ratios": paired}
    report["per_config"][f"dim{dim}/{layout}/{ours_job}" + (f"/nfe{nfe}" if nfe else "")] = row
    print(f"dim={dim} {layout:4s} {ours_job:14s} nfe={nfe} ours {row['ours_ms_best']:.3f} "
          f"peer {row['peer_ms_best']:.3f} ms  ratio {row['peer_over_ours']:.2f} "
          f"(rounds {min(paired):.2f}-{max(paired):.2f})", flush=True)


def summarise(args, report):
  """Per problem, the headline: our ratios in the layout the peer is faster in (summed over its
  configurations), so it never rests on a layout chosen in our favour; also each side in its own
  fastest layout, and the sampler's own cost per step (time per NFE less the noise prediction's)."""
  headline = {}
  for dim in args.dims:
    rows = {k: v for k, v in report["per_config"].items() if k.startswith(f"dim{dim}/")}
    steps = {k: v for k, v in rows.items() if "score_only" not in k}
    totals = {"ours": {}, "peer": {}}
    for k, v in steps.items():
      layout = k.split("/")[1]
      for side in totals:
        totals[side][layout] = totals[side].get(layout, 0.0) + v[f"{side}_ms_best"]
    if not totals["peer"]:
      continue
    best = {side: min(t, key=t.get) for side, t in totals.items()}

    def config(k):
      return k.split("/", 2)[2]

    ratios = {config(k): v["peer_over_ours"] for k, v in steps.items() if k.split("/")[1] == best["peer"]}
    own_best = {config(k): v["peer_ms_best"] / steps[k.replace(f"/{best['peer']}/", f"/{best['ours']}/")]["ours_ms_best"]
                for k, v in steps.items() if k.split("/")[1] == best["peer"]}
    overhead = {}
    for k, v in steps.items():
      layout = k.split("/")[1]
      score = rows.get(f"dim{dim}/{layout}/score_only")
      if score and layout == best["peer"]:
        o, p = v["ours_ms_best"] - score["ours_ms_best"], v["peer_ms_best"] - score["peer_ms_best"]
        overhead[config(k)] = {"ours_ms": o, "peer_ms": p, "peer_over_ours": p / o if o > 0 else None}
    headline[f"dim{dim}"] = {
        "layout": best["peer"], "peer_over_ours": ratios, "min": min(ratios.values()),
        "all_at_least_2x": min(ratios.values()) >= 2,
        "each_in_its_fastest_layout": {"ours": best["ours"], "peer": best["peer"],
                                       "peer_over_ours": own_best},
        "sampler_cost_per_step_without_the_score": overhead}
  report["headline"] = headline


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out")
  parser.add_argument("--dims", type=lambda s: [int(v) for v in s.split(",")], default=[2, 16, 64])
  parser.add_argument("--nfes", type=lambda s: [int(v) for v in s.split(",")], default=[10, 100])
  parser.add_argument("--layouts", type=lambda s: s.split(","), default=LAYOUTS)
  parser.add_argument("--rounds", type=int, default=5, help="back-to-back request pairs per configuration")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per request after a warm-up")
  parser.add_argument("--num", type=int, default=10_000)
  parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
  parser.add_argument("--peer-device", default="auto", choices=["auto", "cpu", "cuda"])
  parser.add_argument("--serve", choices=["ours", "peer"], help=argparse.SUPPRESS)
  parser.add_argument("--dim", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  unknown = [v for v in args.layouts if v not in LAYOUTS]
  if unknown:
    raise SystemExit(f"--layouts: unknown {unknown}; choose from {LAYOUTS}")
  for name in ("rounds", "repeats", "num", "threads"):
    if getattr(args, name) < 1:
      raise SystemExit(f"--{name} must be at least 1, got {getattr(args, name)}")
  if args.serve:
    serve(args)
    return
  if not args.out:
    parser.error("--out is required")

  report = {"meta": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "worker_env": MALLOC_ENV,
                     "args": {k: v for k, v in vars(args).items() if k not in ("serve", "dim")}},
            "workers": {}, "per_config": {}}
  t0 = time.time()
  for dim in args.dims:
    measure(args, dim, report)
    summarise(args, report)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
  report["meta"]["total_seconds"] = time.time() - t0
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print(json.dumps(report["headline"], indent=1))


if __name__ == "__main__":
  main()
