#!/bin/sh
# Refuses to let the stack start with a missing, short or published default secret. Run by the
# `secrets-check` service before anything else (compose.yaml); secrets come from docker/.env
# (copy docker/env.example, fill with `openssl rand -hex 24`).
bad=0
for name in POSTGRES_PASSWORD S3_ACCESS_KEY S3_SECRET_KEY FORGELINE_SERVE_TOKEN MLFLOW_ADMIN_PASSWORD MLFLOW_SERVING_PASSWORD \
    MLFLOW_FLASK_SECRET_KEY; do
  eval "value=\${$name:-}"
  case "$value" in
    ""|forgeline|forgeline-secret|changeme|change-me|password|minioadmin)
      echo "secrets-check: $name is unset or a published default; set it in docker/.env (see docker/env.example)" >&2
      bad=1 ;;
    *)
      if [ "${#value}" -lt 16 ]; then
        echo "secrets-check: $name is ${#value} characters; use at least 16 random ones (openssl rand -hex 24)" >&2
        bad=1
      fi ;;
  esac
done
[ "$bad" = 0 ] && echo "secrets-check: ok"
exit "$bad"
