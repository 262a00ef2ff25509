"""Training images/second of the image U-Nets: our JAX UNet against the same network in PyTorch.

    python benchmarks/train_throughput.py [--out FILE] [--quick] [--threads 1,2]
        [--configs digits,shapes16,shapes32,cifar10] [--rounds 5] [--steps 3]
        [--batch CONFIG=B ...] [--variants xla,auto,matmul,im2col] [--dtype float32|bfloat16]
    python benchmarks/train_throughput.py --micro [--threads 1]   # conv weight gradients alone

What is timed: one training step of eps-prediction denoising score matching on the VP SDE
(Song et al. 2021; t ~ U[1e-5, 1], x_t = alpha(t) x0 + sigma(t) eps, loss = mean over the batch of
||eps_theta(x_t, 999 t) - eps||^2), Adam (lr 2e-4) and an EMA of the parameters (decay 0.999), on a
fixed batch of random images (no input pipeline). Ours is the library's own step:
``train.make_train_step(losses.make_dsm_loss_fn(nets.as_model_fn(UNet(...)), VPSDE()), adam)``,
jitted with the state donated, driven by a Python loop (the ENVIRONMENT note: a lax.scan over conv
train steps is much slower on XLA:CPU). The peer is diffusers' ``UNet2DModel`` configured to the
same architecture (widths, blocks per level, attention resolutions, BigGAN-style resampling
residual blocks, sqrt(2) skip rescaling, GroupNorm eps), plus four small edits that make it the
same network as ours (DDPM++ / score_sde's ncsnpp): a 1x1 shortcut convolution in the resampling
residual blocks, attention only after the last block of a decoder level, ``output_scale_factor``
sqrt(2) in every block, and GroupNorm groups min(32, C / 4) per layer. Both parameter counts are
reported; they agree exactly when the mapping is right.

Ours runs in variants of ``Conv2D.weight_grad``, how every convolution's kernel gradient is
computed (diffusion_jax/nets/conv.py): "xla", XLA's own everywhere (the library without the matmul
weight gradient); "auto", the default (matmul for 1x1 kernels on CPU, XLA's for 3x3); "matmul",
shifted-view matmuls for every kernel; "im2col", one patch-matrix matmul per convolution. The
variant is applied by rebinding the ``Conv2D`` that ``nets.unet`` builds while the step is traced.
``--threads 1,2`` repeats everything with both sides on 1 and then 2 CPUs: on one CPU the process
CPU time per step is also a fair clock on a busy machine (it excludes time spent descheduled),
and the JSON has both the wall-clock and the CPU-time ratios.

``--micro`` instead times single convolution weight gradients (batch 8; 8, 16, 28, 32 px; 3x3
and 1x1 kernels) for each method, batched and under the per-example vmap of the library's train
step, against torch's ``aten.convolution_backward`` (weight only), with the forward for scale.

Fairness: each side runs in its own worker process (one library's thread pool never competes with
the other's), both pinned to the same CPUs (``--threads``, default all this process may use),
torch with ``torch.set_num_threads(threads)``, both with the same glibc malloc settings
(benchmarks/sampler_speed.py measured torch 3-4x faster with them), and torch's OpenMP threads
wait passively (OMP_WAIT_POLICY=PASSIVE, ``--torch-omp-wait-policy``): on this shared 2-core
machine torch's 2-thread step on the digits net took 0.46-0.79 s with spinning threads and 0.21 s
with passive ones. The workers take turns: each
round times ``--steps`` steps of every variant back to back, in an order that rotates from round to
round, so the slow spells of a shared machine hit all sides alike. Images/s is the batch over the
median of the per-round best step times; the ratio ours/peer is the median over rounds of each
round's ratio of best steps (so drift cancels) and is reported next to best-against-best. Warm-up
(compilation, torch's first steps) is not timed; compile time is reported.

On a GPU (``jax.default_backend() == "gpu"``) only ours runs (the bench extra's torch is the CPU
wheel), at GPU batch sizes, and the JSON adds model-FLOPs utilisation: the FLOPs of one compiled
training step from XLA's cost analysis over the step time, against the device's peak in the
chosen dtype (``--dtype bfloat16`` runs the U-Net's computation in bfloat16, parameters float32).

Without torch / diffusers the script still runs and reports ours alone, saying the peer is missing.
Writes one JSON file; nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from experiments import cpu_flags  # noqa: E402  (imports nothing from JAX)
REPLY = "@@reply "  # prefix of a worker's answer lines on stdout
# See the module docstring and benchmarks/sampler_speed.py: a fixed 32 MiB mmap threshold and no
# trimming, for both sides.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}

# The networks. digits and shapes16 are read from experiments/configs (digits.py, shapes16.py), so
# they are the networks those jobs train; shapes32 is the 32x32 shapes network (a fourth level at
# the same width, attention at 8); cifar10 is DDPM++ (cont.) of Song et al. 2021 (score_sde
# configs/vp/cifar10_ddpmpp_continuous: nf 128, ch_mult (1, 2, 2, 2), 4 blocks per level, attention
# at 16, dropout 0.1), built by the library's ``nets.unet.ddpmpp_cifar10()`` (checked field by
# field against this entry).


def _job_network(config_module: str) -> dict:
  import importlib

  from experiments.build_images import image_shape

  config = importlib.import_module(f"experiments.configs.{config_module}").get_config()
  m = config.model
  return dict(image=image_shape(config), model_channels=m.model_channels,
              channel_mult=tuple(m.channel_mult), num_res_blocks=m.num_res_blocks,
              attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout)


@functools.cache
def networks() -> dict:
  """name -> network fields. Built on first use, in the parent only: reading the job configs
  imports the library (and JAX), which the torch worker must not load; workers get their network
  in their job's arguments."""
  return {
      "digits": _job_network("digits"),
      "shapes16": _job_network("shapes16"),
      "shapes32": dict(_job_network("shapes16"), image=(32, 32, 3), channel_mult=(1, 2, 2, 2),
                       attn_resolutions=(8,)),
      "cifar10": dict(image=(32, 32, 3), model_channels=128, channel_mult=(1, 2, 2, 2),
                      num_res_blocks=4, attn_resolutions=(16,), dropout=0.1,
                      library_config="ddpmpp_cifar10"),
  }


# Batch sizes: (CPU, --quick CPU, GPU).
BATCHES = {"digits": (128, 32, 1024), "shapes16": (64, 16, 512), "shapes32": (32, 8, 256),
           "cifar10": (8, 2, 128)}
# Peak dense FLOP/s by device kind and dtype, for MFU (vendor data sheets: H100 / H200 SXM 989 TF
# bf16 and 495 TF TF32 with dense tensor cores; A100 312 / 156).
PEAK_FLOPS = {"H200": {"bfloat16": 989e12, "float32": 495e12},
              "H100": {"bfloat16": 989e12, "float32": 495e12},
              "A100": {"bfloat16": 312e12, "float32": 156e12}}
# jaxlib 0.10.2 hands XLA:CPU's dots, convolutions and reductions to YNNPACK by default. Its
# convolution weight gradients can be pathological (a 3x3 64->64 one at 32 px, batch 32: 774 ms
# against 64 ms on XLA's own Eigen path and 37 ms for the forward), so the extra worker runs with
# the runner's setting (experiments/cpu_flags.py, what experiments.main uses on CPU by default):
# only the matrix products on YNNPACK.

JAX_FLAG_SETS = [("runner", cpu_flags.CONVOLUTIONS_ON_XLA)]
LEARNING_RATE, EMA_DECAY, T_MIN, NOISE_SCALE = 2e-4, 0.999, 1e-5, 999.0
BETA_MIN, BETA_MAX = 0.1, 20.0  # the library's VPSDE defaults


def _pin(cpus):
  os.sched_setaffinity(0, cpus)
  return sorted(os.sched_getaffinity(0))


def _timed(name, step, steps):
  """Wall and process CPU seconds (all threads) of each of ``steps`` calls of ``step() -> loss``."""
  walls, cpus = [], []
  for _ in range(steps):
    t0, c0 = time.perf_counter(), time.process_time()
    loss = step()
    walls.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
  if not math.isfinite(loss):
    raise RuntimeError(f"{name}: the loss is {loss}")
  return {"walls": walls, "cpus": cpus, "loss": loss}


# --------------------------------------------------------------------------------------------------
# Ours (JAX).


class JaxSide:
  """Builds and times the library's DSM train step for the UNet, per weight-gradient variant."""

  def __init__(self, opts):
    import jax

    cache = opts.get("compilation_cache")
    if cache:
      jax.config.update("jax_compilation_cache_dir", cache)
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    self.jax = jax
    self.jobs = {}
    self.meta = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
                 "device_kind": jax.devices()[0].device_kind}

  def build(self, name, config, batch, variant, dtype):
    import functools

    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import optax

    from diffusion_jax import losses, sdes, train
    from diffusion_jax.nets import UNet, as_model_fn, conv, init_params, unet

    h, w, c = config["image"]
    fields = dict(model_channels=config["model_channels"], channel_mult=config["channel_mult"],
                  num_res_blocks=config["num_res_blocks"],
                  attn_resolutions=config["attn_resolutions"], dropout=config["dropout"],
                  embedding="positional", noise_scale=NOISE_SCALE, skip_rescale=True,
                  resblock="biggan", dtype=None if dtype == "float32" else getattr(jnp, dtype))
    module = UNet(**fields)
    if config.get("library_config"):  # the library's named configuration, which must agree
      named = getattr(unet, config["library_config"])(dtype=fields["dtype"])
      differ = {k: (v, getattr(named, k)) for k, v in fields.items() if getattr(named, k) != v}
      if differ:
        raise RuntimeError(f"{config['library_config']}() differs from the benchmark's {name}: {differ}")
      module = named
    x0 = jr.uniform(jr.key(1), (batch, h, w, c), minval=-1.0, maxval=1.0)
    t0 = time.perf_counter()
    params = init_params(module, jr.key(0), x0, jnp.full((batch,), 0.5))
    init_s = time.perf_counter() - t0
    optimizer = optax.adam(LEARNING_RATE)
    loss_fn = losses.make_dsm_loss_fn(as_model_fn(module),
                                      sdes.VPSDE(beta_min=BETA_MIN, beta_max=BETA_MAX), t_min=T_MIN)
    step = jax.jit(train.make_train_step(loss_fn, optimizer, EMA_DECAY), donate_argnums=0)
    state = train.TrainState.create(params, optimizer)
    batch_tree, key = {"x0": x0}, jr.key(2)
    # Every Conv2D of the U-Net takes this variant's weight_grad while the step is traced.
    original = unet.Conv2D
    unet.Conv2D = functools.partial(conv.Conv2D, weight_grad=variant)
    try:
      t0 = time.perf_counter()
      compiled = step.lower(state, batch_tree, key).compile()
      compile_s = time.perf_counter() - t0
    finally:
      unet.Conv2D = original
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    t0 = time.perf_counter()
    state, _ = compiled(state, batch_tree, key)
    jax.block_until_ready(state)
    first_s = time.perf_counter() - t0
    self.jobs[name] = dict(step=compiled, state=state, batch=batch_tree, key=key)
    n = sum(int(p.size) for p in jax.tree.leaves(params))
    return {"params": n, "init_s": init_s, "compile_s": compile_s, "first_step_s": first_s,
            "flops_per_step": flops,
            "resolved_weight_grad": {f"{k}x{k}": conv.resolve_weight_grad(variant, (k, k))
                                     for k in (1, 3)}}

  def time(self, name, steps):
    job = self.jobs[name]

    def step():
      job["state"], metrics = job["step"](job["state"], job["batch"], job["key"])
      self.jax.block_until_ready((job["state"], metrics))
      return float(metrics["loss"])

    return _timed(name, step, steps)

  def drop(self, name):
    self.jobs.pop(name, None)

  def micro(self, shapes, batch, methods, repeats):
    """Best wall / CPU ms of one convolution weight gradient per (px, cin, cout, k) and method,
    batched and under the per-example vmap of the library's train step; the forward for scale."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    from diffusion_jax.nets.conv import conv2d

    out = []
    for px, cin, cout, k in shapes:
      kx, kw, kg = jr.split(jr.key(0), 3)
      x = jr.normal(kx, (batch, px, px, cin))
      w = jr.normal(kw, (k, k, cin, cout)) / math.sqrt(k * k * cin)
      g = jr.normal(kg, (batch, px, px, cout))
      row = {"px": px, "cin": cin, "cout": cout, "kernel": k, "batch": batch,
             "forward": _best(jax.jit(lambda x, w: conv2d(x, w, weight_grad="xla")), (x, w), repeats)}
      for m in methods:
        batched = jax.jit(jax.grad(lambda w, x, g, m=m: jnp.sum(conv2d(x, w, weight_grad=m) * g)))
        per_example = jax.jit(jax.grad(lambda w, x, g, m=m: jnp.sum(jax.vmap(
            lambda xi, gi: jnp.sum(conv2d(xi[None], w, weight_grad=m) * gi[None]))(x, g))))
        row[m] = _best(batched, (w, x, g), repeats)
        row[m + "_vmap"] = _best(per_example, (w, x, g), repeats)
      out.append(row)
    return out


def _best(fn, args, repeats):
  """{"wall_ms", "cpu_ms"}: the best of ``repeats`` calls after a warm-up call."""
  done = (lambda r: r.block_until_ready()) if hasattr(fn(*args), "block_until_ready") else (lambda r: r)
  done(fn(*args))
  wall = cpu = float("inf")
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    done(fn(*args))
    wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
  return {"wall_ms": 1e3 * wall, "cpu_ms": 1e3 * cpu}


# --------------------------------------------------------------------------------------------------
# The peer (PyTorch + diffusers).


def diffusers_unet(config):
  """diffusers' UNet2DModel set up as our UNet (see the module docstring for the four edits)."""
  import torch
  from diffusers import UNet2DModel

  from diffusion_jax.nets.unet import num_groups

  h, _, c = config["image"]
  widths = [config["model_channels"] * m for m in config["channel_mult"]]
  attn = [(h >> level) in config["attn_resolutions"] for level in range(len(widths))]
  model = UNet2DModel(
      sample_size=h, in_channels=c, out_channels=c, time_embedding_type="positional",
      flip_sin_to_cos=False, freq_shift=1,  # [sin, cos] with the endpoint frequency, as ours
      down_block_types=["AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attn],
      up_block_types=["AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attn)],
      block_out_channels=widths, layers_per_block=config["num_res_blocks"],
      mid_block_scale_factor=math.sqrt(2.0), downsample_type="resnet", upsample_type="resnet",
      dropout=config["dropout"], act_fn="silu", attention_head_dim=None,  # one head, as ours
      norm_num_groups=32, norm_eps=1e-6)
  from diffusers.models.attention_processor import Attention
  from diffusers.models.resnet import ResnetBlock2D
  from diffusers.models.unets.unet_2d_blocks import AttnUpBlock2D

  for module in model.modules():
    if isinstance(module, ResnetBlock2D):
      module.output_scale_factor = math.sqrt(2.0)
      if (module.up or module.down) and module.conv_shortcut is None:
        module.use_in_shortcut = True
        module.conv_shortcut = torch.nn.Conv2d(module.in_channels, module.out_channels, 1)
    elif isinstance(module, Attention):
      module.rescale_output_factor = math.sqrt(2.0)
    elif isinstance(module, AttnUpBlock2D):
      for i in range(len(module.attentions) - 1):
        module.attentions[i] = torch.nn.Identity()
  for module in model.modules():
    if isinstance(module, torch.nn.GroupNorm):
      module.num_groups = num_groups(module.num_channels)
  return model


class TorchSide:
  """The same DSM step in PyTorch, on diffusers' UNet2DModel."""

  def __init__(self, opts):
    import torch

    torch.set_num_threads(opts["threads"])
    self.torch = torch
    self.jobs = {}
    self.meta = {"torch_threads": torch.get_num_threads(),
                 "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                 "torch_interop_threads": torch.get_num_interop_threads(),
                 "mkldnn": torch.backends.mkldnn.is_available()}

  def build(self, name, config, batch, variant, dtype):
    torch = self.torch
    if dtype != "float32":
      raise ValueError("the CPU peer runs in float32 only")
    torch.manual_seed(0)
    model = diffusers_unet(config)
    model.train()
    h, w, c = config["image"]
    x0 = torch.rand(batch, c, h, w) * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, foreach=True)
    params = [p for p in model.parameters()]
    ema = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(2)

    def step():
      t = torch.rand(batch, generator=gen) * (1 - T_MIN) + T_MIN
      log_alpha = -0.25 * t ** 2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
      alpha = log_alpha.exp()[:, None, None, None]
      sigma = (-torch.expm1(2 * log_alpha)).sqrt()[:, None, None, None]
      noise = torch.randn(x0.shape, generator=gen)
      pred = model(alpha * x0 + sigma * noise, NOISE_SCALE * t).sample
      loss = ((pred - noise) ** 2).sum(dim=(1, 2, 3)).mean()
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      with torch.no_grad():
        torch._foreach_lerp_(ema, params, 1 - EMA_DECAY)
      return loss.item()

    t0 = time.perf_counter()
    step()
    first_s = time.perf_counter() - t0
    step()  # a second warm-up step: oneDNN primitive caches, allocator
    self.jobs[name] = step
    return {"params": sum(p.numel() for p in params), "first_step_s": first_s}

  def time(self, name, steps):
    return _timed(name, self.jobs[name], steps)

  def micro(self, shapes, batch, methods, repeats):
    """torch's convolution weight gradient (aten.convolution_backward, weight only) and forward."""
    torch = self.torch
    out = []
    for px, cin, cout, k in shapes:
      x, g = torch.randn(batch, cin, px, px), torch.randn(batch, cout, px, px)
      w = torch.randn(cout, cin, k, k) / math.sqrt(k * k * cin)
      pad = [(k - 1) // 2] * 2
      wgrad = lambda: torch.ops.aten.convolution_backward(
          g, x, w, None, [1, 1], pad, [1, 1], False, [0, 0], 1, [False, True, False])
      forward = lambda: torch.nn.functional.conv2d(x, w, padding=pad[0])
      out.append({"px": px, "cin": cin, "cout": cout, "kernel": k, "batch": batch,
                  "forward": _best(forward, (), repeats), "weight_grad": _best(wgrad, (), repeats)})
    return out

  def drop(self, name):
    self.jobs.pop(name, None)


def worker_main(side: str, cpus: list[int], opts: dict):
  """Answer JSON requests on stdin, one per line, with REPLY-prefixed JSON lines on stdout."""
  _pin(cpus)
  sys.path.insert(0, ROOT)
  impl = {"jax": JaxSide, "torch": TorchSide}[side](opts)
  print(REPLY + json.dumps({"ok": True, "meta": impl.meta}), flush=True)
  for line in sys.stdin:
    req = json.loads(line)
    try:
      if req["op"] == "quit":
        break
      args = {k: v for k, v in req.items() if k != "op"}
      if "config" in args:
        args["config"] = {k: tuple(v) if isinstance(v, list) else v for k, v in args["config"].items()}
      out = getattr(impl, req["op"])(**args)
      print(REPLY + json.dumps({"ok": True, "result": out}), flush=True)
    except Exception as e:  # reported to the driver, which decides
      import traceback
      print(REPLY + json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}",
                                "trace": traceback.format_exc()}), flush=True)


# --------------------------------------------------------------------------------------------------
# The driver.


class Worker:
  def __init__(self, side, cpus, opts):
    env = {**os.environ, **MALLOC_ENV, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if side == "torch" and opts.get("omp_wait_policy"):
      env["OMP_WAIT_POLICY"] = opts["omp_wait_policy"]
    if side == "jax" and opts.get("xla_flags"):
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + opts["xla_flags"]).strip()
    self.proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", side,
         "--worker-cpus", ",".join(map(str, cpus)), "--worker-opts", json.dumps(opts)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    self.side = side
    self.meta = self._read()["meta"]

  def _read(self):
    for line in self.proc.stdout:
      if line.startswith(REPLY):
        reply = json.loads(line[len(REPLY):])
        if not reply["ok"]:
          raise RuntimeError(f"{self.side} worker: {reply['error']}\n{reply.get('trace', '')}")
        return reply
    raise RuntimeError(f"the {self.side} worker exited (code {self.proc.wait()})")

  def call(self, op, **kw):
    self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
    self.proc.stdin.flush()
    return self._read()["result"]

  def close(self):
    try:
      self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
      self.proc.stdin.flush()
    except BrokenPipeError:
      pass
    self.proc.wait(timeout=60)


def _peer_missing():
  try:
    import diffusers  # noqa: F401
    import torch  # noqa: F401
  except ImportError as e:
    return f"{e.name} is not installed (pip install -e '.[bench]'); ours is reported alone"
  return None


def _versions():
  from importlib import metadata
  out = {"python": platform.python_version()}
  for pkg in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "diffusers"):
    try:
      out[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      out[pkg] = None
  return out


def _machine(cpus):
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  return {"platform": platform.platform(), "cpu": cpu, "os_cpu_count": os.cpu_count(),
          "cpus_used": cpus, "load_average_at_start": os.getloadavg()}


def _summary(times_by_round, batch):
  """Per-round best step times (wall and CPU) -> seconds per step and images/s over rounds."""
  out = {}
  for clock in ("wall", "cpu"):
    bests = [min(t[clock + "s"]) for t in times_by_round]
    out[clock] = {"best_step_s_per_round": bests, "median_step_s": statistics.median(bests),
                  "images_per_s": batch / statistics.median(bests),
                  "images_per_s_best": batch / min(bests)}
  return out


def _ratios(ours_by_round, peer_by_round):
  """Ours/peer speed: the median over rounds of each round's ratio of best steps, and best/best."""
  out = {}
  for clock in ("wall", "cpu"):
    ours = [min(t[clock + "s"]) for t in ours_by_round]
    peer = [min(t[clock + "s"]) for t in peer_by_round]
    out[clock] = {"median": statistics.median(p / o for p, o in zip(peer, ours)),
                  "best": min(peer) / min(ours)}
  return out


def _peak(kind: str, dtype: str):
  for name, peaks in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peaks.get(dtype)
  return None


def _run_threads(args, cpus, variants, overrides, on_config):
  """All configurations with both workers pinned to ``cpus``: {config name: entry}."""
  opts = {"threads": len(cpus), "compilation_cache": args.compilation_cache,
          "omp_wait_policy": args.torch_omp_wait_policy}
  ours = Worker("jax", cpus, opts)
  gpu = ours.meta["backend"] == "gpu"
  # Extra JAX workers, one per named XLA_FLAGS set; their jobs are named "<variant>@<set>".
  flagged = [] if gpu else [(label, Worker("jax", cpus, {**opts, "xla_flags": flags}))
                            for label, flags in args.jax_flag_sets]
  flag_variants = args.flag_variants.split(",")
  missing = "ours runs on a GPU; the CPU peer is not compared" if gpu else _peer_missing()
  peer = None if missing else Worker("torch", cpus, opts)
  if variants is None:  # on a GPU only the default; on CPU with and without the matmul forms
    variants = ["auto"] if gpu else ["xla", "auto", "matmul"]
  out = {"threads": len(cpus), "cpus": cpus, "jax": ours.meta, "torch": peer.meta if peer else None,
         "jax_flag_sets": {label: flags for label, flags in args.jax_flag_sets} if flagged else {},
         "peer_missing": missing, "load_average_at_start": os.getloadavg(), "configs": {}}
  print(f"threads {len(cpus)} (cpus {cpus}); jax backend {ours.meta['backend']}; "
        f"peer: {'diffusers' if peer else missing}", flush=True)
  try:
    for name in args.configs.split(","):
      config = networks()[name]
      batch = int(overrides.get(name, BATCHES[name][2 if gpu else 1 if args.quick else 0]))
      entry = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
               "batch": batch, "jax": {}, "torch": None}
      jobs = []
      builds = [(ours, v, v) for v in variants] + [
          (worker, v, f"{v}@{label}") for label, worker in flagged for v in flag_variants]
      for worker, v, label in builds:
        key = f"{name}/{label}"
        info = worker.call("build", name=key, config=config, batch=batch, variant=v, dtype=args.dtype)
        entry["jax"][label] = info
        jobs.append((worker, key, info))
        print(f"{name} batch {batch}: ours[{label}] {info['params']:,} params, compile "
              f"{info['compile_s']:.1f} s", flush=True)
      if peer:
        info = peer.call("build", name=f"{name}/torch", config=config, batch=batch, variant="",
                         dtype=args.dtype)
        entry["torch"] = info
        jobs.append((peer, f"{name}/torch", info))
        print(f"{name}: diffusers {info['params']:,} params", flush=True)
      times = {key: [] for _, key, _ in jobs}
      for r in range(args.rounds):
        order = jobs[r % len(jobs):] + jobs[:r % len(jobs)]
        for worker, key, _ in order:
          times[key].append(worker.call("time", name=key, steps=args.steps))
      for worker, key, info in jobs:
        info.update(_summary(times[key], batch))
        info["losses"] = [t["loss"] for t in times[key]]
        worker.call("drop", name=key)
      if peer:
        entry["param_count_relative_difference"] = (
            entry["jax"][variants[0]]["params"] / entry["torch"]["params"] - 1)
        for label in entry["jax"]:
          entry["jax"][label]["speed_vs_torch"] = _ratios(times[f"{name}/{label}"],
                                                          times[f"{name}/torch"])
      if gpu:
        peak = _peak(ours.meta["device_kind"], args.dtype)
        for v in variants:
          info = entry["jax"][v]
          achieved = info["flops_per_step"] / info["wall"]["median_step_s"]
          info["achieved_flops_per_s"] = achieved
          info["peak_flops_per_s"] = peak
          info["mfu"] = achieved / peak if peak else None
      out["configs"][name] = entry
      line = ", ".join(
          f"{v} {entry['jax'][v]['wall']['images_per_s']:.1f} img/s"
          + (" ({wall[median]:.2f}x torch wall, {cpu[median]:.2f}x cpu)".format(
              **entry["jax"][v]["speed_vs_torch"]) if peer else "")
          + (f" MFU {entry['jax'][v]['mfu']:.1%}" if gpu and entry["jax"][v]["mfu"] else "")
          for v in entry["jax"])
      if peer:
        line += f"; torch {entry['torch']['wall']['images_per_s']:.1f} img/s"
      print(f"{name} ({len(cpus)} threads): {line}", flush=True)
      on_config(out)
  finally:
    for worker in [ours, peer] + [w for _, w in flagged]:
      if worker is not None:
        worker.close()
  out["load_average_at_end"] = os.getloadavg()
  return out


MICRO_SHAPES = [(px, cin, cout, k) for px in (8, 16, 28, 32)
                for cin, cout, k in ((3, 64, 3), (64, 64, 3), (128, 128, 3), (128, 128, 1))]


def run_micro(args):
  """The convolution weight-gradient microbenchmark, both sides on the same CPUs, alternating;
  the JAX side also in one worker per extra XLA_FLAGS set (its columns named "<method>@<set>")."""
  allowed = sorted(os.sched_getaffinity(0))
  cpus = allowed[:int(str(args.threads).split(",")[0])] if args.threads else allowed
  opts = {"threads": len(cpus), "compilation_cache": args.compilation_cache,
          "omp_wait_policy": args.torch_omp_wait_policy}
  methods = args.variants.split(",") if args.variants else ["xla", "matmul", "im2col"]
  workers = [("jax", Worker("jax", cpus, opts))]
  workers += [(label, Worker("jax", cpus, {**opts, "xla_flags": flags}))
              for label, flags in args.jax_flag_sets]
  if not _peer_missing():
    workers.append(("torch", Worker("torch", cpus, opts)))
  passes = {label: [] for label, _ in workers}
  try:
    for r in range(args.rounds):
      for label, w in (workers if r % 2 == 0 else workers[::-1]):
        passes[label].append(w.call("micro", shapes=MICRO_SHAPES, batch=args.micro_batch,
                                    methods=methods, repeats=args.steps))
  finally:
    for _, w in workers:
      w.close()

  def best(label, i, key):  # the best over passes, per clock
    return {c: min(p[i][key][c] for p in passes[label]) for c in ("wall_ms", "cpu_ms")}

  rows = []
  for i, shape in enumerate(MICRO_SHAPES):
    row = {k: v for k, v in passes["jax"][0][i].items() if not isinstance(v, dict)}
    for label in passes:
      for key, value in passes[label][0][i].items():
        if isinstance(value, dict):
          name = {"jax": key, "torch": "torch_" + key}.get(label, f"{key}@{label}")
          row[name] = best(label, i, key)
    rows.append(row)
    cols = " ".join(f"{k} {v['cpu_ms']:.2f}" for k, v in row.items() if isinstance(v, dict))
    print(f"{shape[0]}px {shape[1]}->{shape[2]} k{shape[3]} (CPU ms): {cols}", flush=True)
  return {"machine": _machine(cpus), "versions": _versions(), "threads": len(cpus),
          "batch": args.micro_batch, "rounds": args.rounds, "repeats": args.steps,
          "jax_flag_sets": dict(args.jax_flag_sets), "peer_missing": _peer_missing(), "rows": rows}


def run(args, on_config=None):
  """One entry of ``runs`` per thread count, each with every configuration."""
  allowed = sorted(os.sched_getaffinity(0))
  counts = [int(n) for n in str(args.threads).split(",")] if args.threads else [len(allowed)]
  variants = args.variants.split(",") if args.variants else None
  overrides = dict(kv.split("=") for kv in args.batch)
  result = {"machine": _machine(allowed), "versions": _versions(), "dtype": args.dtype,
            "rounds": args.rounds, "steps_per_round": args.steps,
            "train_step": {"loss": "eps-prediction DSM MSE, VP SDE (sum over pixels, mean over "
                                   "the batch)", "optimizer": f"adam lr {LEARNING_RATE}",
                           "ema_decay": EMA_DECAY, "t_min": T_MIN, "noise_scale": NOISE_SCALE},
            "runs": {}}
  for n in counts:
    if not 1 <= n <= len(allowed):
      raise ValueError(f"--threads must list counts in 1..{len(allowed)}, got {n}")
    key = f"threads={n}"

    def partial(out, key=key):
      result["runs"][key] = out
      if on_config is not None:
        on_config(result)

    cpus = allowed[:n]
    result["runs"][key] = _run_threads(args, cpus, variants, overrides, partial)
    if on_config is not None:
      on_config(result)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="", help="default: benchmarks/results/train_throughput.json"
                      " (with --micro: train_throughput_micro.json)")
  parser.add_argument("--configs", default="digits,shapes16,shapes32,cifar10")
  parser.add_argument("--quick", action="store_true", help="CPU-sized: small batches, 2 rounds")
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
  parser.add_argument("--threads", default="", help="comma-separated CPU counts, one run each, "
                      "both sides pinned to the same first N allowed CPUs (default: all allowed)")
  parser.add_argument("--batch", action="append", default=[], help="CONFIG=B, overrides a batch size")
  parser.add_argument("--variants", default="", help="Conv2D weight_grad variants of ours "
                      "(default: xla,auto,matmul on CPU, auto on GPU; im2col also exists)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--jax-flags", action="append", default=None, metavar="LABEL=XLA_FLAGS",
                      help="an extra JAX worker with these XLA_FLAGS (CPU only), its jobs named "
                      "<variant>@LABEL; default: " + " ".join(f"{k}={v}" for k, v in JAX_FLAG_SETS)
                      + "; pass --jax-flags none for no extra worker")
  parser.add_argument("--flag-variants", default="xla,auto",
                      help="the weight_grad variants run by the extra JAX workers")
  parser.add_argument("--compilation-cache", default=os.path.join(
      tempfile.gettempdir(), "diffusion_jax_train_throughput_xla_cache"),
      help="JAX persistent compilation cache ('' for none); compile_s is a cache hit when warm")
  parser.add_argument("--torch-omp-wait-policy", default="PASSIVE", help="OMP_WAIT_POLICY of the "
                      "torch worker ('' leaves it unset); see the module docstring")
  parser.add_argument("--micro", action="store_true", help="instead: the convolution weight-"
                      "gradient microbenchmark (8, 16, 28, 32 px) of every method against torch")
  parser.add_argument("--micro-batch", type=int, default=8)
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--worker-cpus", help=argparse.SUPPRESS)
  parser.add_argument("--worker-opts", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker_main(args.worker, [int(c) for c in args.worker_cpus.split(",")], json.loads(args.worker_opts))
    return
  if args.rounds is None:
    args.rounds = 2 if args.quick else 5
  if args.jax_flags is None:
    args.jax_flag_sets = list(JAX_FLAG_SETS)
  else:
    args.jax_flag_sets = [tuple(kv.split("=", 1)) for kv in args.jax_flags if kv != "none"]
  if not args.out:
    args.out = os.path.join(HERE, "results", "train_throughput_micro.json" if args.micro
                            else "train_throughput.json")
  command = " ".join(sys.argv)

  def write(result):  # after every configuration, so a long run that is cut short keeps its part
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({"command": command, **result}, f, indent=1)

  if args.micro:
    write(run_micro(args))
  else:
    write(run(args, on_config=write))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
