#!/usr/bin/env bash
# Builds gpu_wheels/ (about 8 MB, git-ignored): the packages hcmarl needs that the lent GPU machine's image lacks
# (/work/.library/device/KINDS.md: it has torch 2.11, Lightning, jax, flax, chex, but no torchrl, tensordict,
# jsonargparse, omegaconf, vmas or jaxmarl, and nothing can be fetched there), as Python 3.12 wheels at the versions
# CI installs here. Run it on this machine, then carry gpu_wheels to the device (benchmarks/gpu/check.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p gpu_wheels
binary=(--only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform any --no-deps -d gpu_wheels)
pip download -q "${binary[@]}" torchrl==0.14.1 tensordict==0.14.3 hoptorch==0.1.4 pyvers==0.2.3 orjson==3.13.0 \
    jsonargparse==4.53.0 docstring-parser typeshed-client omegaconf==2.4.0 pyglet==1.5.27 jaxmarl==0.2.0 gymnax==1.0.1
# sdist-only packages, built here into pure-Python wheels
pip wheel -q --no-deps -w gpu_wheels vmas==1.5.2 gym==0.26.2 gym-notices==0.0.8 antlr4-python3-runtime==4.9.3
du -sh gpu_wheels
