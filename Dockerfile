# One image for the server, the ingest job and the trainer (docker-compose.yml).
# CPU by default; build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 for CUDA.
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    PQRAG_DATA_DIR=/data

WORKDIR /app
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" "$TORCH_SPEC"
COPY pyproject.toml README.md ./
COPY pqrag ./pqrag
COPY common ./common
COPY kernels ./kernels
COPY retrieval ./retrieval
COPY llm ./llm
COPY rag ./rag
COPY service ./service
COPY models ./models
# Editable, so the bundled models/ next to the packages is found (service/cli.py BUNDLED_MODEL).
RUN pip install --no-cache-dir -e .

VOLUME ["/data"]
EXPOSE 50051 8080 9464
ENTRYPOINT ["pqrag"]
# Serving 0.0.0.0 needs an API key in /data (or a secret: --admin-key-file, as docker-compose.yml does); without one
# the server refuses to start and says how to make one: docker run -v pqrag-data:/data pqrag keys create
# --data-dir /data --role admin. /metrics has no auth: it is published only with --metrics-host 0.0.0.0 (compose
# maps that port to the host's loopback).
CMD ["serve", "--host", "0.0.0.0", "--port", "50051", "--data-dir", "/data", "--metrics-port", "9464", \
     "--metrics-host", "0.0.0.0"]
