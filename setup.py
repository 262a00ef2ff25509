"""diffusion_jax: score-based and diffusion generative models in JAX/Flax."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent


def _requirements():
  lines = (HERE / "requirements.txt").read_text().splitlines()
  reqs = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
  return [r for r in reqs if not r.startswith(("pytest",))]


setup(
    name="diffusion_jax",
    version="0.1.0",
    description="Score-based and diffusion generative models in JAX/Flax",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["diffusion_jax", "diffusion_jax.*"]),
    python_requires=">=3.11",
    install_requires=_requirements(),
    extras_require={
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0"],
        # Peers measured by the benchmarks; never imported by the library.
        "bench": ["torch==2.13.0", "diffusers==0.42.1"],
    },
)
