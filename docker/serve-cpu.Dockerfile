# CPU serving image: ONNX Runtime CPU EP, INT8 variant preferred when the model bundles it.
#   docker build -f docker/serve-cpu.Dockerfile -t forgeline-serve:cpu .
#   docker run -p 8080:8080 -e MLFLOW_TRACKING_URI=http://mlflow:5000 -e MODEL=forgeline-sentiment@champion forgeline-serve:cpu
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    MODEL=forgeline-sentiment@champion PORT=8080 WORKERS=1
WORKDIR /app
COPY docker/requirements-serve.txt /tmp/requirements-serve.txt
RUN pip install -r /tmp/requirements-serve.txt onnxruntime==1.32.0
COPY pyproject.toml README.md ./
COPY src src
RUN pip install --no-deps . && useradd --create-home forgeline
USER forgeline
# WORKERS: serving processes (--workers); raise it on hosts with cores to spare (each gets cores/N ORT threads)
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD python -c "import urllib.request,os;urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/readyz',timeout=2)"
CMD ["sh", "-c", "exec forgeline serve --model \"$MODEL\" --host 0.0.0.0 --port \"$PORT\" --workers \"$WORKERS\""]
