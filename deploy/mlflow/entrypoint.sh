#!/usr/bin/env bash
# The MLflow tracking server of the deploy stack: PostgreSQL backend store, artifacts proxied to
# an S3-compatible bucket, basic authentication on. Every credential comes from the environment.
#
#   MLFLOW_BACKEND_STORE_URI      postgresql://USER:PASSWORD@HOST:5432/mlflow
#   MLFLOW_AUTH_DATABASE_URI      postgresql://USER:PASSWORD@HOST:5432/mlflow_auth (users, permissions)
#   MLFLOW_ARTIFACTS_DESTINATION  s3://BUCKET/PREFIX (the server writes there; clients never need S3 keys)
#   MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD   the admin created on first start
#   MLFLOW_FLASK_SERVER_SECRET_KEY   signs the CSRF tokens of the auth app (same on every replica)
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, MLFLOW_S3_ENDPOINT_URL   the bucket's keys and endpoint
#   MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000), MLFLOW_WORKERS (2), MLFLOW_AUTH (basic-auth | none)
# Extra arguments go to `mlflow server` unchanged.
set -euo pipefail

require() {
  local name
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      echo "entrypoint: set $name (see deploy/compose/.env.example)" >&2
      exit 2
    fi
  done
}

require MLFLOW_BACKEND_STORE_URI MLFLOW_ARTIFACTS_DESTINATION
args=(
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"
  --serve-artifacts --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
  --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}"
  --workers "${MLFLOW_WORKERS:-2}"
)

if [[ "${MLFLOW_AUTH:-basic-auth}" == "basic-auth" ]]; then
  require MLFLOW_AUTH_DATABASE_URI MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD \
    MLFLOW_FLASK_SERVER_SECRET_KEY
  # MLflow reads the auth store's URI from an ini file only: write one that only we can read.
  umask 077
  auth_ini="$(mktemp -d)/basic_auth.ini"
  cat >"$auth_ini" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI//%/%%}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
  export MLFLOW_AUTH_CONFIG_PATH="$auth_ini"
  args+=(--app-name basic-auth)
fi

# A local-only server would refuse requests whose Host header is the service name.
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
  args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi

exec mlflow server "${args[@]}" "$@"
