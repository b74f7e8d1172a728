# PromptIntern suite image (entrypoint: the `promptintern` CLI); usage in docker/README.md.
# CPU by default; for GPUs build with
#   docker build --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t promptintern:cuda .
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    PROMPTINTERN_HOME=/var/lib/promptintern PROMPTINTERN_DATA=/data
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The base image decides the package versions (Debian for python:*-slim, Ubuntu for the CUDA images).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap make \
 && (command -v python3 >/dev/null || apt-get install -y --no-install-recommends python3 python3-pip) \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/promptintern
COPY pyproject.toml README.md requirements-nodeps.txt ./
COPY promptintern ./promptintern
COPY tasks ./tasks
COPY baselines ./baselines
# `promptintern reproduce` reads benchmarks/tables/*.yaml beside the package (paths.REPO_ROOT), hence the
# editable install: the package stays in /opt/promptintern next to benchmarks/.
COPY benchmarks ./benchmarks
RUN python3 -m pip install --index-url ${TORCH_INDEX} torch==2.13.0 \
 && python3 -m pip install -e . \
 && python3 -m pip install --no-deps -r requirements-nodeps.txt
VOLUME ["/data", "/var/lib/promptintern"]
ENTRYPOINT ["promptintern"]
CMD ["--help"]
