# GPU training worker: runs scheduled forgeline flow runs from the Prefect work pool on an NVIDIA GPU.
#   docker build -f docker/worker-gpu.Dockerfile -t forgeline-worker:gpu .
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv git && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /app
# CUDA PyTorch first (the project pins the CPU build's version for CI), then the project without
# re-resolving torch, then the GPU build of ONNX Runtime in place of the CPU one.
RUN pip install torch==2.11.0 --index-url https://download.pytorch.org/whl/cu130
COPY pyproject.toml README.md ./
COPY src src
RUN sed -i 's/"torch==2.13.0"/"torch>=2.11"/' pyproject.toml && pip install . psycopg2-binary boto3 \
 && pip uninstall -y onnxruntime && pip install onnxruntime-gpu==1.31.1 \
 && useradd --uid 1000 --create-home forgeline && mkdir -p /state && chown forgeline /state
USER forgeline
CMD ["prefect", "worker", "start", "--pool", "forgeline", "--type", "process", "--limit", "1"]
