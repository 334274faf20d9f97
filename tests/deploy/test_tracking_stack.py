"""The deploy tracking stack's real parts on loopback, without Docker, and a training run on it.

PostgreSQL (the distribution's server binaries, started as the ``postgres`` user when run as
root), an S3-compatible server (moto's server mode) and ``mlflow server`` started by
deploy/mlflow/entrypoint.sh, the script the MLflow image runs, with basic auth on. The debug
recipe trains against it; the run, its metrics, the rows in PostgreSQL and an image in the S3
bucket are read back. Every process started here is stopped at the end of the module.

Without PostgreSQL's server binaries the module is skipped, unless LDU_REQUIRE_POSTGRES=1 (as
.ci/run sets it, after installing them), where it fails instead.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import NoReturn

import boto3
import psycopg2
import pytest

# The suite's own helpers for the session's mlflow server (tests/ is on sys.path for them).
from conftest import _free_port, _kill_group
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DB_USER, DB_PASSWORD = "ldu", "db-password-for-tests"
ADMIN, ADMIN_PASSWORD = "admin", "admin-password-for-tests"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
BUCKET = "mlflow"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL server's bin folder; skips (or fails in CI) without one."""
    candidates = [os.environ.get("LDU_PG_BINDIR", "")]
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )[::-1]
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail where CI promised PostgreSQL (LDU_REQUIRE_POSTGRES=1)."""
    if os.environ.get("LDU_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{reason} (LDU_REQUIRE_POSTGRES=1)")
    pytest.skip(reason)


def wait_until(ready: Callable[[], bool], what: str, proc: subprocess.Popen, log: Path) -> None:
    """Poll ``ready`` for up to 120 s; fail with the server's log if it exits or never gets there."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if ready():
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} not ready after 120 s:\n{log.read_text()[-4000:]}")


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A server in its own session, so that _kill_group() ends its workers too."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@dataclass
class Postgres:
    port: int

    def connect(self, dbname: str):
        return psycopg2.connect(
            host="127.0.0.1", port=self.port, user=DB_USER, password=DB_PASSWORD, dbname=dbname
        )

    def uri(self, dbname: str) -> str:
        return f"postgresql+psycopg2://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{self.port}/{dbname}"


def server_owner() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as: ``postgres`` when we are root (the server refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        unavailable("running as root, and there is no postgres user to run the server as")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A throwaway cluster on loopback with password (SCRAM) authentication, fsync off."""
    bindir, owner = postgres_bindir(), server_owner()
    as_user = ["runuser", "-u", "postgres", "--"] if owner else []
    root = Path(tempfile.mkdtemp(prefix="ldu-pg-"))  # under /tmp: the postgres user can enter it
    (root / "pwfile").write_text(DB_PASSWORD + "\n")
    for path in (root, root / "pwfile"):
        if owner:
            os.chown(path, owner.pw_uid, owner.pw_gid)
    data, port = root / "data", _free_port()
    init = [str(bindir / "initdb"), "-D", str(data), "-U", DB_USER, f"--pwfile={root / 'pwfile'}"]
    init += ["--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"]
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off"
    ctl = as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log")]
    try:
        subprocess.run(as_user + init, check=True, capture_output=True, timeout=120)
        subprocess.run(
            ctl + ["-w", "-o", options, "start"], check=True, capture_output=True, timeout=120
        )
        server = Postgres(port)
        conn = server.connect("postgres")
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        for name in ("mlflow", "mlflow_auth"):  # as deploy/compose/initdb does
            conn.cursor().execute(f"CREATE DATABASE {name}")
        conn.close()
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(ctl + ["-w", "-m", "fast", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3-compatible server on loopback, with the artifact bucket created."""
    log, port = tmp_path_factory.mktemp("moto") / "server.log", _free_port()
    proc = start(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], dict(os.environ), log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(url, timeout=2).status == 200, "moto", proc, log)
        s3_client(url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        _kill_group(proc)


def s3_client(url: str):
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture(scope="module")
def tracking_server(
    postgres: Postgres, s3: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`mlflow server` as the MLflow image starts it: deploy/mlflow/entrypoint.sh, basic auth,
    PostgreSQL backend store and auth store, artifacts proxied to the bucket."""
    log, port = tmp_path_factory.mktemp("mlflow") / "server.log", _free_port()
    env = {
        **os.environ,
        **S3_KEYS,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_BACKEND_STORE_URI": postgres.uri("mlflow"),
        "MLFLOW_AUTH_DATABASE_URI": postgres.uri("mlflow_auth"),
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{BUCKET}/artifacts",
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "secret-key-for-tests",
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
    }
    proc = start(["bash", "deploy/mlflow/entrypoint.sh"], env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200,
            "mlflow server",
            proc,
            log,
        )
        yield url
    finally:
        _kill_group(proc)


def api(url: str, endpoint: str, auth: bool = True, **query: str) -> dict:
    """GET one MLflow REST endpoint, as the admin (basic auth) unless ``auth`` is False."""
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    )
    if auth:
        token = base64.b64encode(f"{ADMIN}:{ADMIN_PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def trained_run(tracking_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One round of the debug recipe, `ldu train` against the stack; returns the run id."""
    out = tmp_path_factory.mktemp("stack-run") / "run"
    cmd = [str(BIN / "ldu"), "train", "recipes/debug_adaptive.yaml", f"run.output_dir={out}"]
    cmd += ["loop.max_rounds=1", f"tracking.uri={tracking_server}"]
    cmd += ["tracking.request_timeout_seconds=30", "tracking.system_metrics=false"]
    # The client's credentials: MLflow reads them from the environment. No S3 keys: the server
    # proxies every artifact into the bucket.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert not (out / "tracking_buffer.jsonl").exists(), "tracking fell back to its buffer"
    return json.loads(proc.stdout.strip().splitlines()[-1])["run_id"]


def test_tracking_stack_requires_authentication(tracking_server: str):
    """Without credentials the API answers 401; the admin from the environment gets in."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        api(tracking_server, "experiments/search", auth=False, max_results="1")
    assert refused.value.code == 401
    assert "experiments" in api(tracking_server, "experiments/search", max_results="1")


def test_tracking_stack_run_and_metrics_read_back(tracking_server: str, trained_run: str):
    """The run is FINISHED, with the recipe's params and each player's per-step losses."""
    run = api(tracking_server, "runs/get", run_id=trained_run)["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["loop.k_min"] == "2" and params["data.resolution"] == "32"
    for key, steps in (("attacker_loss", [1, 2]), ("generator_loss", [3, 4])):
        history = api(tracking_server, "metrics/get-history", run_id=trained_run, metric_key=key)
        points = history["metrics"]
        assert [int(m["step"]) for m in points] == steps
        assert all(isinstance(m["value"], float) for m in points)


def test_tracking_stack_backend_rows_are_in_postgres(postgres: Postgres, trained_run: str):
    """The backend store is PostgreSQL: the run and its metric rows are there."""
    with postgres.connect("mlflow") as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (trained_run,))
        assert cur.fetchone() == ("FINISHED",)
        cur.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s", (trained_run,))
        assert cur.fetchone()[0] >= 4
    with postgres.connect("mlflow_auth") as conn, conn.cursor() as cur:
        cur.execute("SELECT username, is_admin FROM users")
        assert (ADMIN, True) in cur.fetchall()


def test_tracking_stack_image_artifact_is_in_the_bucket(s3: str, trained_run: str):
    """The round's image grid lies in the S3 bucket under the run, as a valid non-empty PNG."""
    client = s3_client(s3)
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="artifacts/")
    keys = [obj["Key"] for obj in listing.get("Contents", [])]
    images = [k for k in keys if trained_run in k and "/images/" in k and k.endswith(".png")]
    assert images, keys
    body = client.get_object(Bucket=BUCKET, Key=images[0])["Body"].read()
    assert body.startswith(PNG_SIGNATURE)
    with Image.open(BytesIO(body)) as image:
        image.verify()
        assert image.width > 0 and image.height > 0
    assert any(trained_run in k and k.endswith("config.yaml") for k in keys)
