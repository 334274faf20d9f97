"""One MLflow run per evaluation, with a nested run per (concept, method, purification, attacker).

Logging never stops an evaluation: on any MLflow error the results stay in the CSV and HTML
report, and a warning says so.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from continual_ldu.engine.tracking import TrackingConfig, _local_uri

KEYS = ("concept", "method", "purification", "attacker")


def evaluate_and_report(cfg, evaluation, title: str, extra=None, tradeoff_y="heldout_loss_ratio"):
    """Run ``evaluation`` (an :class:`~continual_ldu.evaluation.harness.Evaluation` of ``cfg``),
    add ``extra(row)`` columns, write ``metrics.csv`` and ``report.html`` and log to MLflow.

    Returns ``(rows, {"csv": path, "html": path}, mlflow run id or None)``."""
    from continual_ldu.config import flatten_config
    from continual_ldu.evaluation.report import write_csv, write_html

    rows = evaluation.run()
    for row in rows if extra else ():
        row.update(extra(row))
    paths = {
        "csv": write_csv(rows, cfg.out / "metrics.csv"),
        "html": write_html(rows, evaluation.grids, cfg.out / "report.html", title, tradeoff_y),
    }
    run_id = log_evaluation(cfg.tracking, cfg.out, rows, flatten_config(cfg), list(paths.values()))
    return rows, paths, run_id


def log_evaluation(
    cfg: TrackingConfig, run_dir: Path, rows: list[dict], params: dict, artifacts: list[Path]
) -> str | None:
    """Log the evaluation; returns the parent run id (None if MLflow could not be reached)."""
    uri = cfg.uri or _local_uri(run_dir)
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(cfg.experiment)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(cfg.experiment)
        )
        parent = client.create_run(
            experiment_id, tags={MLFLOW_RUN_NAME: cfg.run_name or "evaluation"}
        )
        client.log_batch(
            parent.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()]
        )
        for row in rows:
            log_cell(client, experiment_id, parent.info.run_id, row)
        for path in artifacts:
            client.log_artifact(parent.info.run_id, str(path))
        client.set_terminated(parent.info.run_id)
        return parent.info.run_id
    except Exception as err:  # tracking must never cost the results
        warnings.warn(
            f"MLflow at {uri} failed ({err}); the results are in the CSV and HTML", stacklevel=2
        )
        return None


def log_cell(client: MlflowClient, experiment_id: str, parent_id: str, row: dict) -> None:
    """A nested run with the cell's keys as params and its numeric metrics, in one batch."""
    name = "/".join(str(row[k]) for k in KEYS)
    tags = {MLFLOW_PARENT_RUN_ID: parent_id, MLFLOW_RUN_NAME: name}
    child = client.create_run(experiment_id, tags=tags)
    params = [Param(k, str(row[k])) for k in KEYS]
    metrics, skipped = [], []
    for key, value in row.items():
        if key in KEYS:
            continue
        if isinstance(value, int | float) and math.isfinite(value):
            metrics.append(Metric(key, float(value), int(time.time() * 1000), 0))
        else:  # a skipped metric: its reason, as a tag (never a number)
            skipped.append(RunTag(f"skipped.{key}", str(value)[:5000]))
    client.log_batch(child.info.run_id, metrics=metrics, params=params, tags=skipped)
    client.set_terminated(child.info.run_id)
