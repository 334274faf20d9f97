"""deploy/'s launch files agree with accelerate, torchrun, the CLI and each other.

The CPU configs (cpu_ddp, cpu_deepspeed_zero2) are launched for real by
tests/e2e/test_distributed.py and single.yaml by the Slurm test below; every config, the GPU and
multi-node ones included, goes through `accelerate launch`'s own argument handling and torchrun's
resolution of it without starting anything (a dry parse).
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed.run as torchrun
import yaml
from accelerate.commands.launch import _filter_args, _validate_launch_command, launch_command_parser
from accelerate.utils.launch import (
    prepare_deepspeed_cmd_env,
    prepare_multi_gpu_env,
    prepare_simple_launcher_cmd_env,
)

from continual_ldu.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CONFIGS = sorted((DEPLOY / "accelerate").glob("*.yaml"))
RECIPE = "recipes/debug_adaptive.yaml"
LAUNCHED_FOR_REAL = {"single.yaml"}  # by test_slurm_time_limit_requeues_and_resumes


def config(name: str) -> dict:
    return yaml.safe_load((DEPLOY / "accelerate" / name).read_text())


def dry_launch(path: Path, *extra: str):
    """What `accelerate launch --config_file PATH ... -m continual_ldu.cli train RECIPE` would
    start: (torchrun's LaunchConfig or None for one process, the command, the environment)."""
    argv = ["--config_file", str(path), *extra, "-m", "continual_ldu.cli", "train", RECIPE]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    if not (args.use_deepspeed or args.multi_gpu):
        cmd, env = prepare_simple_launcher_cmd_env(args)
        return None, cmd, env
    if args.use_deepspeed:  # as launch_command does before deepspeed_launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    script = ["--training_script", args.training_script]
    script += ["--training_script_args", args.training_script_args]
    launch, entry, entry_args = torchrun.config_from_args(
        _filter_args(args, torchrun.get_args_parser(), script)
    )
    return launch, [entry, *entry_args], env


def test_accelerate_configs_cover_every_target():
    """deploy/accelerate has single GPU, multi-GPU DDP, ZeRO-2, multi-node and the CPU configs."""
    assert [p.name for p in CONFIGS] == [
        "cpu_ddp.yaml",
        "cpu_deepspeed_zero2.yaml",
        "gpu_ddp.yaml",
        "gpu_deepspeed_zero2.yaml",
        "multi_node_ddp.yaml",
        "multi_node_deepspeed_zero2.yaml",
        "single.yaml",
    ]


def test_cpu_configs_are_launched_for_real():
    """Every config is either launched on CPU by a test or dry-parsed here: the e2e test
    parametrizes the two CPU configs, this module launches single.yaml."""
    source = (REPO / "tests" / "e2e" / "test_distributed.py").read_text()
    tree = ast.parse(source)
    launched = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and str(node.value).endswith(".yaml")
    }
    assert {"cpu_ddp.yaml", "cpu_deepspeed_zero2.yaml"} <= launched
    assert {p.name for p in CONFIGS if p.name.startswith("cpu_")} <= launched | LAUNCHED_FOR_REAL


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_accelerate_config_dry_parse_starts_the_cli(path: Path):
    """accelerate accepts the config and the workers it would start run `ldu train`, with one
    worker per process of the config."""
    cfg = config(path.name)
    launch, cmd, _ = dry_launch(path)
    assert cmd[-4:] == ["-m", "continual_ldu.cli", "train", RECIPE]
    if launch is None:
        assert cfg["distributed_type"] == "NO" and cfg["num_processes"] == 1
        return
    assert launch.min_nodes == launch.max_nodes == cfg["num_machines"]
    assert launch.nproc_per_node * cfg["num_machines"] == cfg["num_processes"]
    assert launch.rdzv_backend == "static"


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if "multi_node" in p.name], ids=lambda p: p.stem
)
def test_multi_node_config_takes_rank_and_rendezvous_at_launch(path: Path):
    """A multi-node config takes the machine rank and the first node's address from the
    command line, as deploy/scripts/launch_node.sh passes them, and needs no SSH."""
    extra = ["--num_machines", "4", "--num_processes", "32", "--machine_rank", "3"]
    extra += ["--main_process_ip", "10.1.2.3", "--main_process_port", "29555"]
    launch, _, _ = dry_launch(path, *extra)
    assert (launch.min_nodes, launch.nproc_per_node) == (4, 8)
    assert launch.rdzv_endpoint == "10.1.2.3:29555"
    assert launch.rdzv_configs["rank"] == 3
    cfg = config(path.name)
    assert cfg["num_machines"] > 1 and cfg["use_cpu"] is False
    if cfg["distributed_type"] == "DEEPSPEED":
        assert cfg["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"


@pytest.mark.parametrize(
    "path",
    [p for p in CONFIGS if config(p.name)["distributed_type"] == "DEEPSPEED"],
    ids=lambda p: p.stem,
)
def test_deepspeed_config_names_a_matching_json(path: Path):
    """A DeepSpeed config names a JSON that exists and parses, with the ZeRO stage its name
    says, and accelerate hands that file to the workers."""
    ds = config(path.name)["deepspeed_config"]
    json_path = REPO / ds["deepspeed_config_file"]
    stage = int(re.search(r"zero(\d)", path.name).group(1))
    assert json.loads(json_path.read_text())["zero_optimization"]["stage"] == stage
    assert ds["zero3_init_flag"] is False
    _, _, env = dry_launch(path)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == ds["deepspeed_config_file"]


def test_every_deepspeed_json_is_used():
    """No DeepSpeed JSON under deploy/deepspeed is left without an accelerate config."""
    named = {
        config(p.name).get("deepspeed_config", {}).get("deepspeed_config_file") for p in CONFIGS
    }
    for path in (DEPLOY / "deepspeed").glob("*.json"):
        assert path.relative_to(REPO).as_posix() in named


# -- entry points ----------------------------------------------------------------------------


def instruction(dockerfile: Path, name: str) -> list[str]:
    """The exec-form (JSON) argument list of the last ENTRYPOINT or CMD of a Dockerfile."""
    found = re.findall(rf"^{name}\s+(\[.*\])\s*$", dockerfile.read_text(), flags=re.M)
    assert found, f"{dockerfile.name} has no exec-form {name}"
    return json.loads(found[-1])


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_image_entry_point_names_a_cli_command(flavour: str):
    """The training images run `ldu`, and their default command is one the CLI accepts."""
    dockerfile = DEPLOY / "docker" / f"Dockerfile.{flavour}"
    assert instruction(dockerfile, "ENTRYPOINT") == ["ldu"]
    command = instruction(dockerfile, "CMD")
    args = build_parser().parse_args(command)
    assert args.command == command[0] == "train"
    assert (REPO / args.recipe).is_file()


def test_mlflow_image_runs_the_stack_entrypoint():
    """The tracking image starts deploy/mlflow/entrypoint.sh, the script the stack test runs."""
    dockerfile = (DEPLOY / "docker" / "Dockerfile.mlflow").read_text()
    assert (
        "COPY --chmod=0755 deploy/mlflow/entrypoint.sh /usr/local/bin/mlflow-entrypoint"
        in dockerfile
    )
    assert instruction(DEPLOY / "docker" / "Dockerfile.mlflow", "ENTRYPOINT") == [
        "/usr/local/bin/mlflow-entrypoint"
    ]


def test_launch_node_runs_the_cli_train_command():
    """launch_node.sh starts `continual_ldu.cli train`, a command of the CLI."""
    script = (DEPLOY / "scripts" / "launch_node.sh").read_text()
    module_call = re.search(r"-m continual_ldu\.cli (\S+) \"\$@\"", script)
    assert (
        module_call and build_parser().parse_args([module_call.group(1), RECIPE]).command == "train"
    )


def test_jobset_container_runs_launch_node_with_a_valid_recipe():
    """The Kubernetes trainer runs launch_node.sh with arguments `ldu train` accepts, and its
    accelerate config and rendezvous host exist."""
    (jobset,) = [
        d for d in yaml.safe_load_all((DEPLOY / "k8s" / "train" / "jobset.yaml").read_text()) if d
    ]
    replicated = jobset["spec"]["replicatedJobs"][0]
    pod = replicated["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["bash", "deploy/scripts/launch_node.sh"]
    args = build_parser().parse_args(["train", *container["args"]])
    assert (REPO / args.recipe).is_file()
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (REPO / env["LDU_ACCELERATE_CONFIG"]).is_file()
    machines = replicated["template"]["spec"]["completions"]
    assert int(env["LDU_NUM_MACHINES"]) == machines
    name = jobset["metadata"]["name"]
    assert env["LDU_MAIN_IP"] == f"{name}-{replicated['name']}-0-0.{name}"


# -- Slurm: time limit -> checkpoint -> requeue -> resume, on CPU with stand-ins ------------

SRUN = """#!/usr/bin/env bash
# Test stand-in for srun: run the step's command once, as node 0 of the job.
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
export SLURM_NODEID=0 SLURM_PROCID=0
exec "$@"
"""
SCONTROL = """#!/usr/bin/env bash
# Test stand-in for scontrol: one node; requeue requests are written to $STUB_LOG.
case "$1" in
  show) echo 127.0.0.1 ;;
  requeue) echo "requeue $2" >> "$STUB_LOG" ;;
esac
"""


@pytest.fixture
def slurm_env(tmp_path: Path) -> dict[str, str]:
    """A one-node Slurm job's environment with srun and scontrol stand-ins on PATH."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    path = f"{stubs}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {
        **os.environ,
        "PATH": path,
        "OMP_NUM_THREADS": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_NODELIST": "node001",
        "SLURM_SUBMIT_DIR": str(REPO),
        "STUB_LOG": str(tmp_path / "scontrol.log"),
        "LDU_RUN_DIR": str(tmp_path / "run"),
        "LDU_ACCELERATE_CONFIG": "deploy/accelerate/single.yaml",
        "LDU_PROCS_PER_MACHINE": "1",
    }


def submit(env: dict[str, str]) -> subprocess.Popen[str]:
    """Run train.sbatch as the batch shell of one job (its own session, so it can be cleaned up)."""
    args = ["bash", "deploy/slurm/train.sbatch", RECIPE, "loop.max_rounds=2", "loop.k_max=4"]
    args.append("tracking.system_metrics=false")
    return subprocess.Popen(
        args,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return output


def wait_for_generator_step(proc: subprocess.Popen[str], run_dir: Path, timeout: float = 240):
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while not metrics.is_file() or "generator_loss" not in metrics.read_text():
        assert proc.poll() is None, finish(proc)
        assert time.monotonic() < deadline, "no generator step in time"
        time.sleep(0.5)


def test_slurm_time_limit_requeues_and_resumes(slurm_env: dict[str, str]):
    """SIGUSR1 to the batch shell (Slurm's warning before the time limit): the training process
    commits a checkpoint, the job requeues itself; the requeued job resumes and completes
    every stream item exactly once, without another requeue."""
    run_dir, log = Path(slurm_env["LDU_RUN_DIR"]), Path(slurm_env["STUB_LOG"])
    first = submit(slurm_env)
    wait_for_generator_step(first, run_dir)
    first.send_signal(signal.SIGUSR1)
    output = finish(first)
    assert first.returncode == 0, output[-3000:]
    assert "checkpoint committed; requeueing job 4242" in output, output[-3000:]
    assert log.read_text().splitlines() == ["requeue 4242"]
    assert (run_dir / "checkpoints" / "latest").is_file()

    second = submit({**slurm_env, "SLURM_RESTART_COUNT": "1"})
    output = finish(second)
    assert second.returncode == 0, output[-3000:]
    assert "resumed from" in output and "restart 1" in output
    assert log.read_text().splitlines() == ["requeue 4242"]  # done: no second requeue
    assert (run_dir / "checkpoints" / "latest").read_text() == "round-000002"
    ledger = (run_dir / "stream" / "ledger-rank-0.jsonl").read_text().splitlines()
    positions = sorted(p for line in ledger for p in json.loads(line)["positions"])
    assert positions == list(range(16))
