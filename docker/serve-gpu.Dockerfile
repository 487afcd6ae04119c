# GPU serving image: ONNX Runtime CUDA EP (onnxruntime-gpu, CUDA 13 build) on an NVIDIA runtime.
#   docker build -f docker/serve-gpu.Dockerfile -t forgeline-serve:gpu .
#   docker run --gpus all -p 8080:8080 -e MLFLOW_TRACKING_URI=http://mlflow:5000 -e MODEL=forgeline-sentiment@champion forgeline-serve:gpu
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    MODEL=forgeline-sentiment@champion PORT=8080 WORKERS=4 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /app
COPY docker/requirements-serve.txt /tmp/requirements-serve.txt
RUN pip install -r /tmp/requirements-serve.txt onnxruntime-gpu==1.31.1
COPY pyproject.toml README.md ./
COPY src src
RUN pip install --no-deps . && useradd --create-home forgeline
USER forgeline
# WORKERS: serving processes (--workers); several keep the GPU busy while Python handles requests.
# 4 is a starting point, not a measured optimum: choose with benchmarks/serve_throughput.py --workers 2 4 8
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s \
  CMD python -c "import urllib.request,os;urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/readyz',timeout=2)"
CMD ["sh", "-c", "exec forgeline serve --model \"$MODEL\" --host 0.0.0.0 --port \"$PORT\" --workers \"$WORKERS\" --set device=cuda"]
