"""``ldu``: the command line. Every subcommand takes a recipe and ``key=value`` overrides.

  ldu train RECIPE [k=v ...]           the adaptive continual min-max job (resume=auto by default)
  ldu evaluate RECIPE [k=v ...]        protect -> purify -> personalize -> generate -> metrics, report
  ldu static RECIPE [k=v ...]          fit the surrogate, train rho, protect (the paper's pipeline)
  ldu fit-surrogate RECIPE [k=v ...]   stage 1 only
  ldu train-net RECIPE [k=v ...]       stage 2 only (needs stage 1's output)
  ldu protect RECIPE [k=v ...]         stage 3 only (needs a trained net), or a pixel-space
                                       baseline without one: protect.method=aspl (advdm, ...)
  ldu reference build RECIPE [k=v ...] build the SynthFaces reference model (resumable, cached)
  ldu bench synthfaces RECIPE [k=v ...] methods x purifications x attackers on SynthFaces: a table
  ldu tiny-model OUTPUT_DIR            write the seeded tiny SD-shaped model (diffusers layout)

Exit codes: 0 done; 2 bad config or input (the message says what to change); 3 done, but some
input images were skipped (listed in the summary).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from continual_ldu.config import ConfigError, load_config


def _static_config(args: argparse.Namespace):
    from continual_ldu.engine.static import StaticConfig

    return load_config(StaticConfig, args.recipe, args.overrides)


def _report(summary: dict, output_dir: Path) -> int:
    from continual_ldu.engine.protect import EXIT_SKIPPED

    print(
        f"protected {summary['num_protected']} image(s) into {output_dir} "
        f"(mean PSNR {summary['mean_psnr']}, mean SSIM {summary['mean_ssim']}); "
        f"{summary['num_pulled_back']} pulled back to the budget, "
        f"{summary['num_skipped']} skipped; summary: {output_dir / 'summary.json'}"
    )
    return EXIT_SKIPPED if summary["num_skipped"] else 0


def cmd_train(args: argparse.Namespace) -> int:
    from continual_ldu.engine.trainer import TrainConfig, Trainer

    cfg = load_config(TrainConfig, args.recipe, args.overrides)
    result = Trainer(cfg).train()
    print(json.dumps(result))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from continual_ldu.engine.eval_tracking import evaluate_and_report
    from continual_ldu.evaluation.harness import EvalConfig, Evaluation

    cfg = load_config(EvalConfig, args.recipe, args.overrides)
    evaluation = Evaluation(cfg)
    rows, paths, run_id = evaluate_and_report(cfg, evaluation, "continual_ldu evaluation")
    cache = evaluation.cache
    print(
        f"evaluation: {len(rows)} cell(s); stages reused {cache.hits}, computed {cache.misses}; "
        f"report {paths['html']}; table {paths['csv']}; MLflow run {run_id} in {cfg.out}"
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from continual_ldu.engine.synth_bench import SynthBenchConfig, run_bench

    cfg = load_config(SynthBenchConfig, args.recipe, args.overrides)
    summary = run_bench(cfg)
    check = summary["world_check"]
    print(
        f"SynthFaces bench: {summary['wall_seconds'] / 60:.1f} min; world check: detector rate "
        f"{check['detector_rate']:.2f}, ISM own vs other "
        + ", ".join(
            f"{a} {g['ism_own']:.3f}/{g['ism_other']:.3f}" for a, g in check["ism_gap"].items()
        )
        + f"; table {cfg.out / 'bench.md'}; report {summary['html']}; MLflow run "
        f"{summary['mlflow_run_id']} in {cfg.out}"
    )
    return 0


def cmd_static(args: argparse.Namespace) -> int:
    from continual_ldu.engine.static import run_static

    cfg = _static_config(args)
    summary = run_static(cfg)
    print(
        f"run folder: {cfg.out} (surrogate/, perturbation_net/, training/ with metrics.jsonl and MLflow, config.yaml)"
    )
    return _report(summary, Path(cfg.protect.output_dir or cfg.out / "protected"))


def cmd_fit_surrogate(args: argparse.Namespace) -> int:
    from continual_ldu.engine.static import fit_surrogate

    cfg = _static_config(args)
    fit_surrogate(cfg)
    print(f"surrogate written to {cfg.out / 'surrogate'}")
    return 0


def cmd_train_net(args: argparse.Namespace) -> int:
    from continual_ldu.engine.static import train_net

    cfg = _static_config(args)
    train_net(cfg)
    print(f"perturbation net written to {cfg.out / 'perturbation_net'}")
    return 0


def cmd_protect(args: argparse.Namespace) -> int:
    from continual_ldu.engine.static import protect

    cfg = _static_config(args)
    return _report(protect(cfg), Path(cfg.protect.output_dir or cfg.out / "protected"))


def cmd_reference(args: argparse.Namespace) -> int:
    from continual_ldu.reference.build import ReferenceConfig, build_reference

    cfg = load_config(ReferenceConfig, args.recipe, args.overrides)
    path = build_reference(cfg)
    print(f"reference model: {path} (load it with model.pretrained={path})")
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from continual_ldu.models.tiny import TinyModelConfig, save_tiny_model

    folder = save_tiny_model(TinyModelConfig(seed=args.seed), Path(args.output_dir))
    print(json.dumps({"written": str(folder)}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler, help_text in [
        ("train", cmd_train, "run the adaptive continual min-max job over a stream"),
        ("evaluate", cmd_evaluate, "evaluate protections against purifying attackers"),
        ("static", cmd_static, "fit the surrogate, train the net and protect"),
        ("fit-surrogate", cmd_fit_surrogate, "fit the surrogate personalizer on clean images"),
        ("train-net", cmd_train_net, "train the perturbation net against the surrogate"),
        ("protect", cmd_protect, "protect a folder with a trained net or a baseline"),
    ]:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("recipe", help="a YAML recipe from recipes/")
        sub.add_argument("overrides", nargs="*", help="key=value overrides, e.g. net.num_steps=50")
        sub.set_defaults(handler=handler)
    bench = commands.add_parser("bench", help="benchmarks on the SynthFaces world")
    bench.add_argument("suite", choices=["synthfaces"])
    bench.add_argument(
        "recipe", help="recipes/bench_synthfaces_quick.yaml or bench_synthfaces.yaml"
    )
    bench.add_argument("overrides", nargs="*")
    bench.set_defaults(handler=cmd_bench)
    reference = commands.add_parser("reference", help="the SynthFaces reference world")
    reference.add_argument("action", choices=["build"])
    reference.add_argument("recipe", help="recipes/reference_default.yaml or reference_quick.yaml")
    reference.add_argument("overrides", nargs="*")
    reference.set_defaults(handler=cmd_reference)
    tiny = commands.add_parser("tiny-model", help="write the seeded tiny SD-shaped model")
    tiny.add_argument("output_dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=cmd_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, ValueError) as err:
        print(f"ldu {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
