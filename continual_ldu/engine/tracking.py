"""Experiment tracking: one MLflow run per job, which never takes the training down with it.

Every call goes through an explicit ``MlflowClient`` and run id, never MLflow's fluent global
"active run", so nothing leaks between runs (or tests) in one process. Whatever MLflow does,
``metrics.jsonl`` in the run directory gets one line per :meth:`Tracker.log_metrics`.

When the tracking server is unreachable, or any MLflow call fails, the tracker warns once per
outage and switches to buffering: each call is appended to ``tracking_buffer.jsonl`` (images and
artifact folders are copied under ``tracking_buffer/``). Every ``retry_seconds`` it reconnects,
replays the buffer in order and goes back to live logging. A buffer still left at the end (server
down for good) is replayed later with :func:`replay_buffer`. System metrics are sampled live only;
they are not buffered during an outage.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import RunInfo

__all__ = ["Tracker", "TrackingConfig", "replay_buffer"]

_log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
BUFFER_FILE = "tracking_buffer.jsonl"
BUFFER_DIR = "tracking_buffer"
_MAX_PARAM_VALUE = 6000  # MLflow rejects longer param values ...
_MAX_PARAM_KEY = 250  # ... and longer keys
_MAX_BATCH_PARAMS = 100  # log_batch limits per request
_MAX_BATCH_METRICS = 1000
# Error codes meaning "the server is up but refuses this record". Retrying cannot help, so such a
# record is dropped with a warning instead of switching to buffering (where it would block the
# replay of everything behind it forever).
_REJECTED = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS"}
_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}  # a malformed id is not found

F = TypeVar("F", bound=Callable[..., Any])
Record = dict[str, Any]


@dataclass
class TrackingConfig:
    """Where and how a job is tracked in MLflow."""

    # None: a local store, sqlite:///<run_dir>/mlflow.db with artifacts in <run_dir>/mlartifacts.
    uri: str | None = None
    experiment: str = "continual_ldu"
    run_name: str | None = None
    log_images_every: int = 1  # rounds
    register_model: str | None = "continual_ldu_perturbation_net"
    system_metrics: bool = True
    retry_seconds: float = 30.0  # while buffering, how often to try the server again
    request_timeout_seconds: float = 5.0  # per HTTP request; an unreachable server fails this fast

    def validate(self) -> list[str]:
        """Problems with the values, one line each."""
        errors = []
        if not self.experiment:
            errors.append("experiment must not be empty")
        if self.log_images_every < 1:
            errors.append(f"log_images_every must be >= 1, got {self.log_images_every}")
        if self.retry_seconds < 0 or self.request_timeout_seconds <= 0:
            errors.append("retry_seconds must be >= 0 and request_timeout_seconds > 0")
        return errors


# ----------------------------------------------------------------------------------------------
# Small helpers


def _local_uri(run_dir: Path) -> str:
    """The default store: a sqlite file inside the run directory."""
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def _is_remote(uri: str) -> bool:
    """True for stores that are a server (they choose where artifacts go)."""
    return uri.startswith(("http://", "https://", "databricks"))


def _artifact_root(run_dir: Path) -> Path:
    return Path(run_dir).resolve() / "mlartifacts"


def _artifact_location(uri: str, run_dir: Path) -> str | None:
    """Artifact location for a new experiment: the run dir for local stores, since MLflow would
    otherwise use ``./mlruns`` relative to whatever the working directory happens to be."""
    return None if _is_remote(uri) else _artifact_root(run_dir).as_uri()


def _fail_fast_http(timeout_s: float) -> None:
    """Make an unreachable tracking server fail within ``timeout_s`` instead of minutes.

    MLflow's HTTP client retries each request 7 times with exponential backoff and waits up to
    120 s per attempt, which would stall training at every log call; our own buffer-and-retry loop
    replaces those retries. MLflow only reads these settings from the environment (process-wide).
    """
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(timeout_s)))  # parsed as int


def _clean_key(name: str) -> str:
    """An image key MLflow accepts (alphanumerics, ``_-./`` and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name) or "image"


def _to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    """PIL image from a PIL image or an HW/HWC/CHW array (uint8, or float in [0, 1])."""
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW, as torch tensors come
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr)


def _param_strings(params: Mapping[str, object]) -> dict[str, str]:
    """Params as MLflow stores them: strings, keys and values cut to MLflow's limits."""
    return {str(k)[:_MAX_PARAM_KEY]: str(v)[:_MAX_PARAM_VALUE] for k, v in params.items()}


def _first_line(err: BaseException, limit: int = 300) -> str:
    """Short form of an error for a one-line warning (MLflow's HTTP errors span paragraphs)."""
    text = str(err).strip().splitlines()
    return text[0][:limit] if text else ""


def _error_code(err: BaseException) -> str | None:
    return getattr(err, "error_code", None)


def _never_raises(method: F) -> F:
    """Tracking must never kill training: a disabled tracker does nothing, errors become warnings."""

    @functools.wraps(method)
    def wrapper(self: Tracker, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception:
            _log.warning("tracking: %s failed; training continues", method.__name__, exc_info=True)
            return None

    return cast(F, wrapper)


# ----------------------------------------------------------------------------------------------
# MLflow operations, all with an explicit client and run id


def _make_client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient  # lazily: importing mlflow takes seconds

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client: MlflowClient, name: str, location: str | None) -> str:
    """Id of the experiment called ``name``, created (or restored from the bin) as needed."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=location)
    if exp.lifecycle_stage == "deleted":  # runs cannot be created in a deleted experiment
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _open_or_create(
    client: MlflowClient, header: Mapping[str, Any], location: str | None
) -> RunInfo:
    """The run ``header["run_id"]`` if this store has it, else a new run in its experiment."""
    from mlflow.exceptions import MlflowException

    run_id = header.get("run_id")
    if run_id:
        try:
            return client.get_run(run_id).info
        except MlflowException as err:
            if _error_code(err) not in _NOT_FOUND:
                raise
            _log.warning("tracking: run %s is not in this store; logging to a new run", run_id)
    exp_id = _experiment_id(client, header["experiment"], location)
    return client.create_run(exp_id, run_name=header.get("run_name")).info


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """Log params not yet in the run; MLflow params are immutable, so changed ones are skipped."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
    if changed:
        _log.warning("tracking: params keep their first logged values (immutable): %s", changed)
    new = [Param(k, v) for k, v in params.items() if k not in existing]
    for i in range(0, len(new), _MAX_BATCH_PARAMS):
        client.log_batch(run_id, params=new[i : i + _MAX_BATCH_PARAMS])


def _log_metrics(client: MlflowClient, run_id: str, rec: Record) -> None:
    from mlflow.entities import Metric

    step, stamp = int(rec["step"]), int(rec["timestamp"])
    metrics = [Metric(k, float(v), stamp, step) for k, v in rec["metrics"].items()]
    for i in range(0, len(metrics), _MAX_BATCH_METRICS):
        client.log_batch(run_id, metrics=metrics[i : i + _MAX_BATCH_METRICS])


@functools.cache
def _image_has_steps() -> bool:
    """Whether this MLflow's ``log_image`` takes ``key``/``step`` (2.12+: a stepped image chart)."""
    import inspect

    from mlflow import MlflowClient

    return "step" in inspect.signature(MlflowClient.log_image).parameters


def _log_image(client: MlflowClient, run_id: str, rec: Record) -> None:
    image = rec["image"] if "image" in rec else Image.open(rec["path"])
    name, step = rec["name"], int(rec["step"])
    if _image_has_steps():
        client.log_image(run_id, image, key=name, step=step, timestamp=int(rec["timestamp"]))
    else:
        client.log_image(run_id, image, artifact_file=f"images/{name}_{step:06d}.png")


def _register(client: MlflowClient, run_id: str, rec: Record) -> None:
    """Upload the folder and make it a new version of registered model ``rec["name"]``."""
    from mlflow.exceptions import MlflowException

    name, artifact_path = rec["name"], f"models/{rec['name']}"
    client.log_artifacts(run_id, rec["path"], artifact_path)
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if _error_code(err) != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    client.create_model_version(name, source, run_id=run_id, await_creation_for=0)


_OPS: dict[str, Callable[[MlflowClient, str, Record], None]] = {
    "params": lambda c, run_id, rec: _log_params(c, run_id, rec["params"]),
    "file": lambda c, run_id, rec: c.log_artifact(run_id, rec["path"], rec.get("artifact_path")),
    "metrics": _log_metrics,
    "image": _log_image,
    "artifacts": lambda c, run_id, rec: c.log_artifacts(run_id, rec["path"], rec["artifact_path"]),
    "register": _register,
    "end": lambda c, run_id, rec: c.set_terminated(run_id, rec["status"]),
}


def _apply(client: MlflowClient, run_id: str, rec: Record) -> bool:
    """Send one record; False if MLflow refused it for good (dropped with a warning)."""
    try:
        _OPS[rec["op"]](client, run_id, rec)
    except Exception as err:
        if _error_code(err) not in _REJECTED:
            raise  # the server may be down: the caller buffers and retries
        _log.warning("tracking: MLflow refused %r (dropped): %s", rec["op"], err)
        return False
    return True


# ----------------------------------------------------------------------------------------------
# The on-disk buffer: JSON lines; a "run" header line starts each tracker session's records.


def _stash(rec: Record, run_dir: Path) -> Record:
    """JSON-able copy of ``rec``. In-memory images, and the files it names, are copied under
    ``tracking_buffer/`` since they may change or vanish before the replay; paths are stored
    relative to ``run_dir`` so a run dir copied elsewhere can still be replayed."""
    out, folder = dict(rec), run_dir / BUFFER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    if "image" in out:
        dst = folder / f"{tag}_{out['name'].replace('/', '~')}_{out['step']:06d}.png"
        out.pop("image").save(dst)
    elif "path" in out:
        src = Path(out["path"])
        dst = folder / f"{tag}_{src.name}"
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
    else:
        return out
    out["path"] = str(dst.relative_to(run_dir))
    return out


def _read_records(path: Path) -> list[Record]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _write_records(path: Path, records: list[Record]) -> None:
    """Replace the buffer atomically, so a crash mid-write cannot lose it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


RunFor = Callable[["MlflowClient", Record], str]


def _replay_file(client: MlflowClient, run_dir: Path, run_for: RunFor) -> int:
    """Replay ``run_dir``'s buffer in order and delete it; returns how many calls went through.

    ``run_for`` maps each session header to the run its records belong to. On failure the unsent
    records stay on disk behind their header (now holding the run id) and the error propagates.
    """
    path = run_dir / BUFFER_FILE
    if not path.exists():
        return 0
    records, done, header, run_id = _read_records(path), 0, None, ""
    try:
        for rec in records:
            if rec["op"] == "run":
                header = {**rec, "run_id": run_for(client, rec)}
                run_id = header["run_id"]
            else:
                _apply(client, run_id, _resolved(rec, run_dir))
            done += 1
    except Exception:
        rest = records[done:]
        if done:  # drop what went through; the header tells the rest which run it belongs to
            keep = rest if rest[0]["op"] == "run" or header is None else [header, *rest]
            _write_records(path, keep)
        raise
    path.unlink()
    shutil.rmtree(run_dir / BUFFER_DIR, ignore_errors=True)
    return sum(r["op"] != "run" for r in records)


def _resolved(rec: Record, run_dir: Path) -> Record:
    if "path" not in rec or Path(rec["path"]).is_absolute():
        return rec
    return {**rec, "path": str(run_dir / rec["path"])}


def replay_buffer(run_dir: str | Path, uri: str | None = None) -> int:
    """Send the calls a job buffered in ``run_dir`` while MLflow was unreachable to ``uri``
    (default: the run dir's local sqlite store); returns how many were sent.

    Each session's calls go to its recorded run if ``uri`` has it, else to a new run in the same
    experiment. Raises if MLflow fails; the unsent rest stays on disk, so just run it again.
    """
    run_dir = Path(run_dir)
    uri = uri or _local_uri(run_dir)
    location = _artifact_location(uri, run_dir)
    client = _make_client(uri)
    return _replay_file(client, run_dir, lambda c, h: _open_or_create(c, h, location).run_id)


# ----------------------------------------------------------------------------------------------
# The tracker


class Tracker:
    """One MLflow run for one job. No method ever raises; while MLflow is unreachable the calls
    are buffered on disk and replayed later (see the module docstring).

    ``enabled=False`` (non-zero ranks) makes every method a no-op that writes nothing. ``run_id``
    reopens an existing run (resume) instead of creating one.
    """

    def __init__(
        self, cfg: TrackingConfig, run_dir: Path, enabled: bool = True, run_id: str | None = None
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.run_id = run_id
        self.uri = cfg.uri or _local_uri(self.run_dir)
        self._resume = run_id is not None
        self._client: MlflowClient | None = None
        self._run_ready = False  # the run exists (created or reopened) in the store
        self._experiment_id: str | None = None
        self._live = False  # calls go straight to MLflow
        self._warned = False  # this outage was reported
        self._next_retry = 0.0
        self._session = uuid.uuid4().hex  # tags this tracker's records in a shared buffer file
        self._header_written = False
        self._monitor: Any = None  # mlflow's SystemMetricsMonitor while running
        self._want_monitor = cfg.system_metrics

    # -- public API ----------------------------------------------------------------------------

    @_never_raises
    def start(self, params: Mapping[str, object], config_yaml: Path | None = None) -> str | None:
        """Create (or reopen) the run, log ``params`` and the config YAML; returns the run id
        (None while MLflow is unreachable: the run is created on the first successful retry)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.uri.startswith(("http://", "https://")):
            _fail_fast_http(self.cfg.request_timeout_seconds)
        self._reconnect()  # also replays a buffer a previous process left in this run dir
        self._call({"op": "params", "params": _param_strings(params)})
        if config_yaml is not None:
            self._call({"op": "file", "path": str(config_yaml), "artifact_path": None})
        return self.run_id

    @_never_raises
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at ``step``: to MLflow, and always as a line of ``metrics.jsonl``."""
        now = time.time()
        values = {str(k): float(v) for k, v in metrics.items()}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": int(step), "time": now, **values}) + "\n")
        rec = {"op": "metrics", "metrics": values, "step": int(step)}
        self._call({**rec, "timestamp": int(now * 1000)})

    def wants_images(self, round_idx: int) -> bool:
        """Whether round ``round_idx`` (counted from 0) should log images (``log_images_every``)."""
        return self.enabled and round_idx % self.cfg.log_images_every == 0

    @_never_raises
    def log_image(self, image: np.ndarray | Image.Image, name: str, step: int) -> None:
        """Log an image (PIL, or an HW/HWC/CHW uint8 or [0, 1] float array) as ``name`` at ``step``."""
        stamp = int(time.time() * 1000)
        rec = {"op": "image", "image": _to_pil(image), "name": _clean_key(name), "step": int(step)}
        self._call({**rec, "timestamp": stamp})

    @_never_raises
    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        """Upload the files under ``folder`` to ``artifact_path`` in the run."""
        self._call({"op": "artifacts", "path": str(folder), "artifact_path": artifact_path})

    @_never_raises
    def register_model(self, folder: Path, name: str | None = None) -> None:
        """Upload ``folder`` and register it as a new version of model ``name`` (default: the
        config's ``register_model``; if that is None too, the folder is only uploaded)."""
        name = name or self.cfg.register_model
        if name is None:
            self._call({"op": "artifacts", "path": str(folder), "artifact_path": "model"})
        else:
            self._call({"op": "register", "path": str(folder), "name": name})

    @_never_raises
    def flush(self) -> bool:
        """Try to send buffered calls now, without waiting for the retry timer; True if live."""
        if not self._live:
            self._reconnect()
        return self._live

    @_never_raises
    def end(self, status: str = "FINISHED") -> None:
        """Stop system metrics and close the run as ``status``, after a last replay attempt."""
        self._stop_monitor()
        if not self._live:
            self._reconnect()
        self._call({"op": "end", "status": status})
        if not self._live:
            _log.warning(
                "tracking: MLflow at %s is still unreachable; the calls are kept in %s. Replay "
                'them later with: python -c "from continual_ldu.engine.tracking import '
                "replay_buffer; replay_buffer('%s', '%s')\"",
                self.uri,
                self.run_dir / BUFFER_FILE,
                self.run_dir,
                self.uri,
            )

    def ui_hint(self) -> str:
        """One line telling how to look at this run in the MLflow UI."""
        if not self.enabled:
            return "tracking is disabled in this process"
        if not _is_remote(self.uri):
            where = (
                f" (experiment {self._experiment_id}, run {self.run_id})" if self._run_ready else ""
            )
            return (
                f"mlflow ui --backend-store-uri {self.uri} --default-artifact-root "
                f"{_artifact_root(self.run_dir)}   # then open http://127.0.0.1:5000{where}"
            )
        base = self.uri.rstrip("/")
        if not self._run_ready:
            return f"{base} (experiment {self.cfg.experiment!r}; the run is not created yet)"
        return f"{base}/#/experiments/{self._experiment_id}/runs/{self.run_id}"

    # -- connection state ----------------------------------------------------------------------

    def _reconnect(self) -> bool:
        """Connect (creating or reopening the run if needed) and replay the buffer."""
        try:
            self._connect()
            replayed = _replay_file(self._client, self.run_dir, self._run_for)
        except Exception as err:
            self._go_offline(err)
            return False
        self._header_written = False  # the buffer file is gone
        if self._warned:
            _log.warning(
                "tracking: MLflow at %s is back; %d buffered calls sent", self.uri, replayed
            )
        self._live, self._warned = True, False
        self._start_monitor()
        return True

    def _connect(self) -> None:
        if self._client is None:
            self._client = _make_client(self.uri)
        if self._run_ready:
            return
        header = {"run_id": self.run_id, "experiment": self.cfg.experiment}
        location = _artifact_location(self.uri, self.run_dir)
        info = _open_or_create(self._client, {**header, "run_name": self.cfg.run_name}, location)
        if self._resume:
            self._client.update_run(info.run_id, status="RUNNING")
        self.run_id, self._experiment_id, self._run_ready = info.run_id, info.experiment_id, True

    def _run_for(self, client: MlflowClient, header: Record) -> str:
        """The run a buffered session belongs to: ours, or a previous process's."""
        if header.get("session") == self._session:
            return cast(str, self.run_id)
        location = _artifact_location(self.uri, self.run_dir)
        return _open_or_create(client, header, location).run_id

    def _go_offline(self, err: BaseException) -> None:
        self._live = False
        self._next_retry = time.monotonic() + self.cfg.retry_seconds
        if self._warned:
            return
        self._warned = True
        _log.warning(
            "tracking: MLflow at %s failed (%s: %s). Training continues; tracking calls are "
            "buffered in %s and replayed when it is reachable again (retry every %gs).",
            self.uri,
            type(err).__name__,
            _first_line(err),
            self.run_dir / BUFFER_FILE,
            self.cfg.retry_seconds,
        )
        self._stop_monitor()

    def _call(self, rec: Record) -> None:
        """Send ``rec`` live if possible, else append it to the buffer."""
        if not self._live and time.monotonic() >= self._next_retry:
            self._reconnect()
        if self._live:
            try:
                _apply(cast("MlflowClient", self._client), cast(str, self.run_id), rec)
                return
            except Exception as err:
                self._go_offline(err)
        self._buffer(rec)

    def _buffer(self, rec: Record) -> None:
        lines = [] if self._header_written else [self._header()]
        lines.append(_stash(rec, self.run_dir))
        with open(self.run_dir / BUFFER_FILE, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in lines))
        self._header_written = True

    def _header(self) -> Record:
        return {
            "op": "run",
            "session": self._session,
            "run_id": self.run_id if self._run_ready else None,
            "experiment": self.cfg.experiment,
            "run_name": self.cfg.run_name,
        }

    # -- system metrics ------------------------------------------------------------------------

    def _start_monitor(self) -> None:
        """Sample CPU/GPU/disk/network into the run. MLflow's own monitor class is used with an
        explicit run id, as ``start_run(log_system_metrics=True)`` would need the global run."""
        if not self._want_monitor or self._monitor is not None:
            return
        if importlib.util.find_spec("psutil") is None:
            self._want_monitor = False
            _log.warning("tracking: psutil is not installed, so no system metrics are logged")
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id, resume_logging=True, tracking_uri=self.uri
            )
            self._monitor.start()
        except Exception as err:  # optional: never worth losing the run over
            self._want_monitor, self._monitor = False, None
            _log.warning("tracking: system metrics unavailable: %s", err)

    def _stop_monitor(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.finish()
