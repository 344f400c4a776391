# syntax=docker/dockerfile:1
# The attribution server image. The index and the model are mounted read-only, never baked in;
# configuration comes only from LORIF_* environment variables (see server/settings.py).
# The project installs as one package, lorif_serve; nothing else lands in site-packages.
#
#   GPU (default):  docker build -t lorif-serve .
#   CPU only:       docker build --build-arg VARIANT=cpu -t lorif-serve:cpu .
#                   (add --build-arg TORCH_INDEX_URL=<a CPU-only torch wheel index> for a slim image)
ARG VARIANT=gpu
ARG GPU_BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
ARG CPU_BASE=python:3.11-slim-bookworm

FROM ${GPU_BASE} AS base-gpu
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM ${CPU_BASE} AS base-cpu
ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX_URL=""
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"

# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    LORIF_HOST=0.0.0.0 \
    LORIF_PORT=8000 \
    LORIF_INDEX=/data/index.h5
WORKDIR /app

# Dependency layer: only pyproject.toml, so code changes do not reinstall dependencies.
# (DL3013: this installs the project's own pinned dependency set, not a loose package.)
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN mkdir -p lorif_serve && touch lorif_serve/__init__.py \
    && pip install --no-cache-dir ".[server,gguf]" \
    && pip uninstall -y lorif-serve && rm -r lorif_serve

# Code layer (lorif_serve/ links to the three code folders; pip copies what they point to).
COPY indexer ./indexer
COPY server ./server
COPY client ./client
COPY lorif_serve ./lorif_serve
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info \
    && useradd --create-home --uid 10001 app
WORKDIR /home/app

USER 10001
EXPOSE 8000
# Liveness only (readiness is /readyz); start-period covers loading a large index.
HEALTHCHECK --interval=15s --timeout=3s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LORIF_PORT', '8000') + '/healthz', timeout=2)"]
# Exec form: SIGTERM reaches uvicorn, which stops accepting and drains in-flight requests.
ENTRYPOINT ["lorif-serve"]
