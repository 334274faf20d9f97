"""deploy/ passes the field's linters: hadolint, shellcheck, yamllint, kubernetes-validate.

Each linter runs over every file of its kind under deploy/ (the tests assert how many it saw, so
an empty glob cannot pass), and each is shown to reject a broken file, so a linter that checks
nothing cannot pass either. kubernetes-validate has no schema for the JobSet CRD: its pod
template is validated strictly as the batch/v1 Job it becomes, and the JobSet's own fields are
checked against the keys of the JobSet v1alpha2 API.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.33.0"  # the oldest release the manifests promise to work on
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile.*"))
SCRIPTS = sorted([*DEPLOY.rglob("*.sh"), *DEPLOY.rglob("*.sbatch")])
YAMLS = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *DEPLOY.rglob(".*.yaml")])
MANIFESTS = sorted((DEPLOY / "k8s").rglob("*.yaml"))


def run(tool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a linter installed beside this Python (the dev extra), from the repository root."""
    return subprocess.run(
        [str(BIN / tool), *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_hadolint_passes_every_dockerfile():
    """The GPU, CPU and MLflow Dockerfiles have no hadolint finding."""
    assert [p.name for p in DOCKERFILES] == [
        "Dockerfile.cpu",
        "Dockerfile.gpu",
        "Dockerfile.mlflow",
    ]
    result = run("hadolint", *DOCKERFILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_passes_every_script():
    """Every shell script and sbatch file under deploy/ is shellcheck-clean."""
    names = {p.relative_to(DEPLOY).as_posix() for p in SCRIPTS}
    assert {
        "mlflow/entrypoint.sh",
        "scripts/launch_node.sh",
        "slurm/train.sbatch",
    } <= names
    result = run("shellcheck", "--shell=bash", "--severity=style", *SCRIPTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_passes_deploy():
    """Every YAML file under deploy/ (configs, compose, manifests) passes yamllint."""
    assert len(YAMLS) >= 15, [p.name for p in YAMLS]
    result = run("yamllint", "--strict", "-c", DEPLOY / ".yamllint.yaml", *YAMLS)
    assert result.returncode == 0, result.stdout + result.stderr


# A broken file per linter and the finding it must report: a linter that checks nothing fails.
BROKEN = {
    "hadolint": ("Dockerfile", "FROM ubuntu:latest\nRUN apt-get install -y curl\n", "DL3007"),
    "shellcheck": ("bad.sh", "#!/bin/bash\nrm -rf $1/tmp\n", "SC2086"),
    "yamllint": ("bad.yaml", "name: a\nname: b\n", "key-duplicates"),
}


@pytest.mark.parametrize("tool", sorted(BROKEN))
def test_linter_rejects_a_broken_file(tool: str, tmp_path: Path):
    """Each linter, run as the tests above run it, reports the known finding of a broken file."""
    name, text, finding = BROKEN[tool]
    bad = tmp_path / name
    bad.write_text(text)
    config = ["-c", DEPLOY / ".yamllint.yaml"] if tool == "yamllint" else []
    result = run(tool, *config, bad)
    assert result.returncode != 0 and finding in result.stdout, result.stdout + result.stderr


def core_resources() -> list[tuple[Path, dict]]:
    """Every manifest document whose kind is built into Kubernetes (not a CRD)."""
    found = []
    for path in MANIFESTS:
        found += [(path, doc) for doc in documents(path) if doc["kind"] != "JobSet"]
    return found


def test_kubernetes_validate_core_manifests_strictly():
    """Namespace, Secret, ConfigMap, Services, StatefulSets, Deployment, Jobs and the PVC
    match the Kubernetes schemas, unknown fields rejected."""
    resources = core_resources()
    kinds = sorted({doc["kind"] for _, doc in resources})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Job",
        "Namespace",
        "PersistentVolumeClaim",
        "Secret",
        "Service",
        "StatefulSet",
    ]
    files = sorted({path for path, _ in resources})
    result = run("kubernetes-validate", "--strict", "-k", K8S_VERSION, *files)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count(" passed for resource ") == len(resources), output
    assert "Couldn't find schema" not in output


def test_kubernetes_validate_rejects_an_unknown_field():
    """kubernetes-validate does check: a misspelt field fails strict validation."""
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "x"},
        "spec": {"backofLimit": 0, "template": {"spec": {"containers": []}}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


# The fields of the JobSet v1alpha2 API (jobset.x-k8s.io) that a manifest may use.
JOBSET_SPEC = {
    "replicatedJobs",
    "network",
    "successPolicy",
    "failurePolicy",
    "startupPolicy",
    "suspend",
    "coordinator",
    "managedBy",
    "ttlSecondsAfterFinished",
}
JOBSET_ACTIONS = {"FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"}


def jobsets() -> list[dict]:
    return [doc for path in MANIFESTS for doc in documents(path) if doc["kind"] == "JobSet"]


def test_jobset_fields_follow_the_api():
    """The training JobSet uses only JobSet v1alpha2 fields and valid failure actions."""
    (jobset,) = jobsets()
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    assert set(jobset["spec"]) <= JOBSET_SPEC
    rules = jobset["spec"]["failurePolicy"]["rules"]
    assert {rule["action"] for rule in rules} <= JOBSET_ACTIONS
    for replicated in jobset["spec"]["replicatedJobs"]:
        assert set(replicated) <= {"name", "replicas", "template", "dependsOn", "groupName"}


def test_jobset_job_template_is_a_valid_indexed_job():
    """Each replicated job's template validates strictly as a batch/v1 Job, indexed, with a
    pod failure policy that ends the Job on the launcher's resumable exit code (75)."""
    (jobset,) = jobsets()
    for replicated in jobset["spec"]["replicatedJobs"]:
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"{jobset['metadata']['name']}-{replicated['name']}"},
            **replicated["template"],
        }
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        spec = job["spec"]
        assert spec["completionMode"] == "Indexed"
        assert spec["parallelism"] == spec["completions"]
        exit_codes = [
            r["onExitCodes"]["values"]
            for r in spec["podFailurePolicy"]["rules"]
            if "onExitCodes" in r
        ]
        assert [75] in exit_codes
