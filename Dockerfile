# syntax=docker/dockerfile:1
# Indexer image (CPU by default). Model, data and index are mounted, never baked in:
#   docker run --rm -v $PWD/models:/models:ro -v $PWD/data:/data:ro -v $PWD/out:/out \
#     lorif lorif-index build --model /models/m --data /data/train.jsonl --out /out/index.h5
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
WORKDIR /app
RUN pip install --no-cache-dir "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY indexer ./indexer
COPY server ./server
COPY client ./client
COPY examples ./examples
RUN pip install --no-cache-dir ".[server,gguf]" && useradd --create-home --uid 10001 app
USER app
ENTRYPOINT ["lorif-index"]
CMD ["--help"]
