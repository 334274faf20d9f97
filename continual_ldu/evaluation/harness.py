"""``ldu evaluate``: protect set_B -> purify -> personalize the base model -> generate -> measure.

For each concept folder (``set_A`` clean reference, ``set_B`` to protect, optional ``set_C``) and
each (method, purification, attacker) of the recipe:
    protected   = method(set_B)                     (none, or a trained LDU net / run checkpoint)
    purified    = purification(protected)
    attacker    = personalizer fitted on purified, as an attacker would (diffusers recipes)
    generations = attacker's model on the evaluation prompts, seeded
    metrics     = fidelity(protected, set_B), protection(generations, set_A),
                  held-out attacker loss on clean set_A / that of an attacker trained on clean set_B
Every stage is cached by content (``evaluation/cache.py``): a sweep recomputes only what changed.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from tqdm.auto import tqdm

from continual_ldu.baselines import BASELINES, BaselineConfig, build_baseline
from continual_ldu.config import config_to_dict
from continual_ldu.data.images import load_folder, prepare, save_png, to_tensor, to_uint8
from continual_ldu.engine.rounds import class_latents, encode_batched
from continual_ldu.engine.static import optimize
from continual_ldu.engine.tracking import TrackingConfig
from continual_ldu.evaluation.cache import StageCache, file_digest, stage_key, tensor_digest
from continual_ldu.method.objectives import ObjectiveConfig
from continual_ldu.method.protector import Protector, enforce_budget
from continual_ldu.method.trajectory import TrajectoryConfig, build_trajectory
from continual_ldu.metrics import MetricsConfig, build_metrics
from continual_ldu.models.loading import ModelConfig, load_model
from continual_ldu.models.perturbation_net import PerturbationNet
from continual_ldu.personalizers import PersonalizerConfig, build_personalizer
from continual_ldu.purifications import PurificationConfig, build_purification
from continual_ldu.seeding import make_generator, seed_everything


@dataclass
class EvalRunConfig:
    output_dir: str = "runs/eval"
    seed: int = 0


@dataclass
class EvalDataConfig:
    concepts_dir: str = "continual_ldu/assets/eval_concepts"
    concepts: list[str] | None = None  # None: every sub-folder with set_A and set_B
    resolution: int = 64


@dataclass
class MethodSpec:
    """A protection to evaluate: ``none``, an LDU net (a ``perturbation_net`` folder, or a
    min-max run's checkpoint folder, whose ``net/`` is used), or a pixel-space baseline
    (``kind: baseline, baseline: {name: aspl, ...}``; knobs left out take the peer's defaults)."""

    name: str = "none"
    kind: Literal["none", "ldu", "baseline"] = "none"
    path: str | None = None
    baseline: BaselineConfig | None = None
    budget_psnr_db: float | None = None  # an LDU net's own MSE budget; None: objective's
    roundtrip: bool | None = None  # an LDU net trained on encode(x'); None: objective's

    def objective(self, default: ObjectiveConfig) -> ObjectiveConfig:
        """The objective of this LDU net: the recipe's, with this method's own budget and
        round-trip choice where it sets them."""
        if self.budget_psnr_db is not None:
            default = replace(default, budget="mse", budget_psnr_db=self.budget_psnr_db)
        return default if self.roundtrip is None else replace(default, roundtrip=self.roundtrip)

    def validate(self) -> list[str]:
        if self.kind == "ldu" and not self.path:
            return [f"method {self.name!r}: kind=ldu needs path (a perturbation_net folder)"]
        if self.kind == "baseline" and (self.baseline is None or self.baseline.name is None):
            return [f"method {self.name!r}: kind=baseline needs baseline.name (e.g. aspl)"]
        return []


@dataclass
class GenerationConfig:
    """The attacker's generations: prompts (with ``{token}``), count and sampler."""

    prompts: list[str] = field(
        default_factory=lambda: ["a photo of {token} person", "a dslr portrait of {token} person"]
    )
    num_images_per_prompt: int = 16
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    batch_size: int = 8
    seed: int = 0


@dataclass
class EvalConfig:
    """The root config of ``ldu evaluate``."""

    run: EvalRunConfig = field(default_factory=EvalRunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    methods: list[MethodSpec] = field(default_factory=lambda: [MethodSpec()])
    purifications: list[PurificationConfig] = field(default_factory=lambda: [PurificationConfig()])
    attackers: list[PersonalizerConfig] = field(
        default_factory=lambda: [PersonalizerConfig(name="dreambooth_lora")]
    )
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def out(self) -> Path:
        return Path(self.run.output_dir)


def find_concepts(cfg: EvalConfig) -> list[Path]:
    """Concept folders holding set_A and set_B."""
    root = Path(cfg.data.concepts_dir)
    if not root.is_dir():
        raise ValueError(f"data.concepts_dir: {root} is not a folder of concept folders")
    names = cfg.data.concepts or sorted(p.name for p in root.iterdir() if (p / "set_B").is_dir())
    missing = [
        n for n in names if not ((root / n / "set_A").is_dir() and (root / n / "set_B").is_dir())
    ]
    if missing or not names:
        raise ValueError(f"data.concepts: {missing or 'none'} lack set_A/ and set_B/ under {root}")
    return [root / n for n in names]


def load_set(folder: Path, resolution: int) -> torch.Tensor:
    loaded, skipped = load_folder(folder, min_side=min(resolution, 64))  # 32-px worlds too
    for item in skipped:
        print(f"skipped {item.path}: {item.reason}")
    return to_tensor([prepare(item.image, resolution) for item in loaded])


def attacker_token(cfg: PersonalizerConfig) -> str:
    """The word that names the concept in this attacker's prompts."""
    return cfg.placeholder_token if cfg.name == "textual_inversion" else cfg.token


def sampling_pipeline(model, unet=None, text_encoder=None) -> StableDiffusionPipeline:
    """A DDIM text-to-image pipeline on ``model``'s parts (``unet`` / ``text_encoder``: fine-tuned
    copies), without safety checker or progress bar."""
    pipe = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=text_encoder or model.text_encoder,
        tokenizer=model.tokenizer,
        unet=unet or model.unet,
        scheduler=DDIMScheduler.from_config(model.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample(
    pipe, prompts: list[str], resolution: int, g: GenerationConfig, steps: int
) -> torch.Tensor:
    """Seeded generations for ``prompts`` in batches of ``g.batch_size``, in [0, 1]."""
    generator = torch.Generator("cpu").manual_seed(g.seed)
    images = [
        pipe(
            prompts[start : start + g.batch_size],
            height=resolution,
            width=resolution,
            num_inference_steps=steps,
            guidance_scale=g.guidance_scale,
            generator=generator,
            output_type="pt",
        ).images
        for start in range(0, len(prompts), g.batch_size)
    ]
    return torch.cat(images)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    return ((images.float().cpu() + 1) / 2).clamp(0, 1)


TIMING_FILE = "timing.json"


@contextmanager
def timed_protection(out: Path, images: int):
    """Record the wall time of a protection (only the method's own work: no model or class-image
    loading, no saving) in its stage folder, so the cached stage keeps its cost."""
    started = time.perf_counter()
    yield
    seconds = time.perf_counter() - started
    (out / TIMING_FILE).write_text(json.dumps({"seconds": seconds, "images": images}))


def protection_seconds(folder: Path) -> float | None:
    """Seconds per image recorded by ``timed_protection`` in a protect stage folder, if any."""
    path = folder / TIMING_FILE
    if not path.is_file():
        return None
    timing = json.loads(path.read_text())
    return timing["seconds"] / timing["images"]


class Evaluation:
    """Runs the stage graph for one recipe; results are rows of metric values."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self.cache = StageCache(cfg.out / "cache")
        self.model = load_model(cfg.model)
        self.metrics = build_metrics(cfg.metrics, self.model.device)
        self.rows: list[dict] = []
        self.grids: list[dict] = []

    def run(self) -> list[dict]:
        concepts = find_concepts(self.cfg)
        c = self.cfg
        total = len(concepts) * len(c.methods) * len(c.purifications) * len(c.attackers)
        bar = tqdm(total=total, desc="evaluate", unit="cell", dynamic_ncols=True)
        for concept in concepts:
            self.run_concept(concept, bar)
        bar.close()
        return self.rows

    def run_concept(self, concept: Path, bar) -> None:
        res = self.cfg.data.resolution
        set_a, set_b = load_set(concept / "set_A", res), load_set(concept / "set_B", res)
        key_b = tensor_digest(set_b)
        baselines = {
            i: self.clean_baseline(a, set_a, set_b, key_b) for i, a in enumerate(self.cfg.attackers)
        }
        for method in self.cfg.methods:
            protected, key_p = self.protect(method, set_b, key_b, set_a)
            fidelity = self.measure("fidelity", to_unit(protected), to_unit(set_b))
            for purification in self.cfg.purifications:
                purified, key_u = self.purify(purification, protected, key_p)
                for index, attacker in enumerate(self.cfg.attackers):
                    generations, personalizer = self.attack(attacker, purified, key_u)
                    row = {
                        "concept": concept.name,
                        "method": method.name,
                        "purification": purification.name,
                        "attacker": attacker.name,
                        **fidelity,
                        **self.measure("protection", to_unit(generations), to_unit(set_a)),
                    }
                    row.update(self.intrinsic(personalizer, set_a, baselines[index]))
                    self.rows.append(row)
                    self.grids.append(
                        {
                            **{
                                k: row[k] for k in ("concept", "method", "purification", "attacker")
                            },
                            "clean": set_b,
                            "protected": protected,
                            "purified": purified,
                            "generations": generations,
                        }
                    )
                    bar.update(1)

    # -- stages ----------------------------------------------------------------------------

    def protect(self, method: MethodSpec, set_b: torch.Tensor, key_b: str, set_a=None):
        if method.kind == "none":
            return set_b, stage_key("protect", images=key_b, method="none")
        if method.kind == "baseline":
            return self.protect_with_baseline(method.baseline, set_b, key_b, set_a)
        folder = Path(method.path)
        folder = folder / "net" if (folder / "net" / "config.json").is_file() else folder
        o = method.objective(self.cfg.objective)
        key = stage_key(
            "protect",
            images=key_b,
            net=file_digest(folder),
            trajectory=config_to_dict(self.cfg.trajectory),
            objective=config_to_dict(o),
        )

        def compute(out: Path) -> torch.Tensor:
            net = PerturbationNet.from_pretrained(folder).to(self.model.device).eval()
            trajectory = build_trajectory(self.cfg.trajectory, self.model)
            protector = Protector(self.model, trajectory, net, o.output)
            with torch.no_grad(), timed_protection(out, len(set_b)):
                x = set_b.to(self.model.device)
                protected, _ = protector(protector.prepare(x, make_generator(self.cfg.run.seed)))
                final, _ = enforce_budget(x, protected, o.budget, o.budget_value)
                final = final.cpu()
            self.save_images(final, out)
            return final

        return self.cache.tensor("protect", key, compute), key

    def protect_with_baseline(self, cfg: BaselineConfig, set_b, key_b: str, set_a):
        """A pixel-space baseline on set_B, with clean set_A as the reference of the peers that
        fit a surrogate; keyed on the baseline's config, the images and (where used) set_A."""
        uses_reference = BASELINES[cfg.name].uses_reference and set_a is not None
        key = stage_key(
            "protect",
            images=key_b,
            baseline=config_to_dict(cfg),
            reference=tensor_digest(set_a) if uses_reference else None,
            seed=self.cfg.run.seed,
        )

        def compute(out: Path) -> torch.Tensor:
            baseline, res = build_baseline(cfg, self.model), self.cfg.data.resolution
            if baseline.needs_class_latents:  # class-prior latents, cached like the attackers'
                prior = stage_key("class_latents", prior=baseline.cfg.prior_settings(), res=res)
                path = self.cache.root / "class_latents" / f"{prior}.pt"
                baseline.class_latents = class_latents(path, baseline.cfg, self.model, res)
            device = self.model.device
            reference = set_a.to(device) if uses_reference else None
            generator = make_generator(self.cfg.run.seed)
            with timed_protection(out, len(set_b)):
                final = baseline.protect(set_b.to(device), generator, reference=reference).cpu()
            self.save_images(final, out)
            return final

        return self.cache.tensor("protect", key, compute), key

    def purify(self, cfg: PurificationConfig, images: torch.Tensor, key_in: str):
        key = stage_key(
            "purify", images=key_in, purification=config_to_dict(cfg), seed=self.cfg.run.seed
        )

        def compute(out: Path) -> torch.Tensor:
            purification = build_purification(cfg, self.model)
            result = purification.purify(
                images.to(self.model.device), make_generator(self.cfg.run.seed)
            )
            self.save_images(result, out)
            return result.cpu()

        return self.cache.tensor("purify", key, compute), key

    def attack(self, cfg: PersonalizerConfig, images: torch.Tensor, key_in: str):
        """Fit the attacker on ``images`` (cached as its saved weights), then generate."""
        key = stage_key(
            "attack", images=key_in, attacker=config_to_dict(cfg), seed=self.cfg.run.seed
        )
        folder = self.cache.folder("attack", key)
        self.cache.json("attack", key, lambda out: self.fit_attacker(cfg, images, out))
        personalizer = self.fresh_personalizer(cfg)
        personalizer.load(folder / "weights")
        gen_key = stage_key(
            "generate", attacker=key, generation=config_to_dict(self.cfg.generation)
        )
        generations = self.cache.tensor(
            "generate", gen_key, lambda out: self.generate(cfg, personalizer, out)
        )
        return generations, personalizer

    def fit_attacker(self, cfg: PersonalizerConfig, images: torch.Tensor, out: Path) -> dict:
        personalizer = self.fresh_personalizer(cfg)
        if cfg.prior_preservation:  # class images from the base model, shared by every cell
            key = stage_key("class_latents", attacker=config_to_dict(cfg))
            path = self.cache.root / "class_latents" / f"{key}.pt"
            personalizer.class_latents = class_latents(
                path, cfg, self.model, self.cfg.data.resolution
            )
        latents = encode_batched(self.model, images.to(self.model.device))
        generator = make_generator(self.cfg.run.seed)

        def step_loss(step: int) -> torch.Tensor:
            index = torch.randint(0, len(latents), (cfg.batch_size,), generator=generator)
            return personalizer.training_loss(latents[index], generator)["loss"]

        trace = optimize(
            personalizer.trainable_parameters(),
            step_loss,
            cfg.num_steps,
            cfg.learning_rate,
            cfg.weight_decay,
            f"attacker ({cfg.name})",
        )
        personalizer.save(out / "weights")
        return {"final_loss": trace[-1] if trace else None, "num_steps": cfg.num_steps}

    def fresh_personalizer(self, cfg: PersonalizerConfig):
        """A personalizer on a freshly loaded base model (TI adds a token to the model it is given)."""
        seed_everything(self.cfg.run.seed)
        model = self.model if cfg.name != "textual_inversion" else load_model(self.cfg.model)
        return build_personalizer(cfg, model)

    @torch.no_grad()
    def generate(self, cfg: PersonalizerConfig, personalizer, out: Path) -> torch.Tensor:
        g = self.cfg.generation
        pipe = sampling_pipeline(personalizer.base, personalizer.unet, personalizer.text_encoder)
        prompts = [p.format(token=attacker_token(cfg)) for p in g.prompts]
        prompts = [p for p in prompts for _ in range(g.num_images_per_prompt)]
        images = sample(pipe, prompts, self.cfg.data.resolution, g, g.num_inference_steps)
        result = (images * 2 - 1).cpu()
        self.save_images(result, out)
        return result

    def clean_baseline(self, cfg: PersonalizerConfig, set_a, set_b, key_b: str) -> float | None:
        """The held-out loss of an attacker trained on clean set_B (the intrinsic measure's unit)."""
        _, personalizer = self.attack(cfg, set_b, stage_key("protect", images=key_b, method="none"))
        return self.intrinsic(personalizer, set_a, None).get("heldout_loss")

    # -- measuring -------------------------------------------------------------------------

    def measure(self, kind: str, *images: torch.Tensor) -> dict:
        results = {}
        for metric in (m for m in self.metrics if m.kind == kind):
            result = metric.compute(*images)
            results[metric.name] = result.value if result.ok else result.skipped
        return results

    def intrinsic(self, personalizer, set_a: torch.Tensor, baseline: float | None) -> dict:
        latents = encode_batched(self.model, set_a.to(self.model.device))
        results = {}
        for metric in (m for m in self.metrics if m.kind == "intrinsic"):
            result = metric.compute(
                personalizer, latents, make_generator(self.cfg.run.seed), self.model.scheduler
            )
            results[metric.name] = result.value if result.ok else result.skipped
            if result.ok and baseline:
                results[f"{metric.name}_ratio"] = result.value / baseline
        return results

    @staticmethod
    def save_images(images: torch.Tensor, folder: Path) -> None:
        for index, array in enumerate(to_uint8(images.cpu())):
            save_png(array, folder / f"{index:03d}.png")
