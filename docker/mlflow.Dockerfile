# MLflow tracking server + registry with a PostgreSQL store and an S3-compatible artifact store, behind
# MLflow's basic-auth app: the worker writes as admin, serving reads as a READ-only user (mlflow-auth.ini).
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" psycopg2-binary boto3 && useradd --uid 1000 --create-home mlflow
COPY docker/mlflow-auth.ini /etc/mlflow/auth.ini
ENV MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/auth.ini
USER mlflow
EXPOSE 5000
CMD ["sh", "-c", "exec mlflow server --app-name basic-auth --host 0.0.0.0 --port 5000 --backend-store-uri \"$MLFLOW_BACKEND_STORE_URI\" --artifacts-destination \"$MLFLOW_ARTIFACTS_DESTINATION\" --serve-artifacts"]
