"""Unit tests for continual_ldu.reference.evaluators and the SynthFaces metrics.

One session fixture trains the quick preset of both evaluators (about 20 s on 2 cores); the
tests then check that they do their jobs on held-out identities, round-trip through disk, and
drive ``ism_synth`` / ``fdfr_synth``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from continual_ldu.config import ConfigError
from continual_ldu.metrics.base import MetricsConfig
from continual_ldu.metrics.synthfaces import FDFRSynth, ISMSynth
from continual_ldu.reference.evaluators import (
    CONFIG_FILE,
    EvaluatorConfig,
    Evaluators,
    FaceClassifier,
    IdentityNet,
    face_classifier_accuracy,
    heldout_batch,
    load_evaluators,
    main,
    patch_shuffle,
    render_background,
    save_evaluators,
    shift,
    train_face_classifier,
    train_identity_net,
    verification_accuracy,
)

# Quick preset: trained ~0.89 held-out verification (seed 0); untrained nets of the same shape
# score 0.58-0.67 (seeds 0-2), so 0.8 separates a working net from a broken one.
MIN_VERIFICATION = 0.8


@pytest.fixture(scope="session")
def quick_cfg() -> EvaluatorConfig:
    return EvaluatorConfig.quick()


@pytest.fixture(scope="session")
def identity_net(quick_cfg: EvaluatorConfig) -> IdentityNet:
    return train_identity_net(quick_cfg, progress=False)


@pytest.fixture(scope="session")
def face_classifier(quick_cfg: EvaluatorConfig) -> FaceClassifier:
    return train_face_classifier(quick_cfg, progress=False)


@pytest.fixture(scope="session")
def evaluators_dir(
    tmp_path_factory: pytest.TempPathFactory,
    identity_net: IdentityNet,
    face_classifier: FaceClassifier,
    quick_cfg: EvaluatorConfig,
) -> Path:
    folder = tmp_path_factory.mktemp("synth-evaluators")
    return save_evaluators(folder, identity_net, face_classifier, quick_cfg, {"x": 1.0})


@pytest.fixture(scope="session")
def clean_accuracy(identity_net: IdentityNet, quick_cfg: EvaluatorConfig) -> float:
    return verification_accuracy(identity_net, quick_cfg)


_HELDOUT: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _heldout(cfg: EvaluatorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The quick preset's held-out renders, rendered once per session."""
    if id(cfg) not in _HELDOUT:
        _HELDOUT[id(cfg)] = heldout_batch(cfg)
    return _HELDOUT[id(cfg)]


def _images(cfg: EvaluatorConfig, heldout: int, n: int = 4) -> torch.Tensor:
    images, labels = _heldout(cfg)
    return images[labels == heldout][:n]


# --- identity net ----------------------------------------------------------------------------


def test_identity_net_separates_heldout_identities(clean_accuracy: float) -> None:
    """Held-out identities (never trained on) are verified far better than chance."""
    assert clean_accuracy > MIN_VERIFICATION


def test_untrained_identity_net_fails_the_threshold(quick_cfg: EvaluatorConfig) -> None:
    """The threshold is meaningful: the same architecture, untrained, stays below it."""
    torch.manual_seed(0)
    net = IdentityNet(quick_cfg.widths, quick_cfg.embedding_dim).eval()
    assert verification_accuracy(net, quick_cfg) < MIN_VERIFICATION - 0.05


@pytest.mark.parametrize("probe", ["jpeg", "shift"])
def test_verification_robust_to_jpeg_and_shift(
    probe: str, identity_net: IdentityNet, quick_cfg: EvaluatorConfig, clean_accuracy: float
) -> None:
    """JPEG q75 probes and 2-px shifted probes stay within 0.1 of clean verification."""
    assert verification_accuracy(identity_net, quick_cfg, probe) > clean_accuracy - 0.1


def test_embeddings_are_unit_norm(identity_net: IdentityNet, quick_cfg: EvaluatorConfig) -> None:
    with torch.no_grad():
        embeddings = identity_net(_images(quick_cfg, 0))
    assert embeddings.shape == (4, quick_cfg.embedding_dim)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(4), atol=1e-5)


def test_unknown_probe_rejected(identity_net: IdentityNet, quick_cfg: EvaluatorConfig) -> None:
    with pytest.raises(ValueError, match="probe"):
        verification_accuracy(identity_net, quick_cfg, "blur")


# --- face classifier -------------------------------------------------------------------------


def test_face_classifier_faces_vs_patch_shuffled(
    face_classifier: FaceClassifier, quick_cfg: EvaluatorConfig
) -> None:
    """Held-out renders score above 0.5 and their 4x4 patch-shuffles below, in > 80%."""
    images, _ = _heldout(quick_cfg)
    shuffled = patch_shuffle(images, 4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        faces, nonfaces = face_classifier(images), face_classifier(shuffled)
    assert float((faces > 0.5).float().mean()) > 0.8
    assert float((nonfaces < 0.5).float().mean()) > 0.8


def test_face_classifier_rejects_backgrounds(
    face_classifier: FaceClassifier, quick_cfg: EvaluatorConfig
) -> None:
    """Background-only renders (the world's backgrounds without the person) are non-faces."""
    backgrounds = [render_background(300 + i, i, quick_cfg.resolution, 0) for i in range(20)]
    batch = torch.from_numpy(np.stack([np.asarray(b) for b in backgrounds]))
    with torch.no_grad():
        probs = face_classifier(batch.permute(0, 3, 1, 2).float() / 255)
    assert float((probs < 0.5).float().mean()) > 0.8


def test_face_classifier_heldout_accuracy(
    face_classifier: FaceClassifier, quick_cfg: EvaluatorConfig
) -> None:
    assert face_classifier_accuracy(face_classifier, quick_cfg) > 0.85


# --- helpers, config, determinism ------------------------------------------------------------


def test_patch_shuffle_permutes_patches() -> None:
    images = torch.rand(2, 3, 16, 16)
    out = patch_shuffle(images, 4, torch.Generator().manual_seed(0))
    assert not torch.equal(out, images)
    patches = images.unfold(2, 4, 4).unfold(3, 4, 4).reshape(2, 3, 16, 16)
    moved = out.unfold(2, 4, 4).unfold(3, 4, 4).reshape(2, 3, 16, 16)
    for b in range(2):  # same multiset of patches
        key = lambda t: sorted(t.permute(1, 0, 2).reshape(16, -1).tolist())  # noqa: E731
        assert key(patches[b]) == key(moved[b])


def test_shift_moves_content() -> None:
    images = torch.zeros(1, 3, 8, 8)
    images[0, :, 3, 3] = 1.0
    moved = shift(images, 2, 1)
    assert moved[0, 0, 4, 5] == 1.0 and moved.sum() == 3.0


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="num_identities"):
        EvaluatorConfig(num_identities=400).check()
    with pytest.raises(ConfigError, match="resolution"):
        EvaluatorConfig(resolution=50).check()


def test_training_is_deterministic() -> None:
    """Same config, same weights, bit for bit (a tiny run, both nets)."""
    cfg = EvaluatorConfig.quick(
        num_identities=6, images_per_identity=4, epochs=1, batch_size=8, face_images=16
    )
    for train in (train_identity_net, train_face_classifier):
        first, second = train(cfg, progress=False), train(cfg, progress=False)
        a, b = first.state_dict(), second.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


# --- saving ----------------------------------------------------------------------------------


def test_save_load_round_trips_exactly(
    evaluators_dir: Path,
    identity_net: IdentityNet,
    face_classifier: FaceClassifier,
    quick_cfg: EvaluatorConfig,
) -> None:
    loaded = load_evaluators(evaluators_dir)
    assert isinstance(loaded, Evaluators)
    assert loaded.config == quick_cfg
    images = _images(quick_cfg, 1)
    with torch.no_grad():
        assert torch.equal(loaded.identity_net(images), identity_net(images))
        assert torch.equal(loaded.face_classifier(images), face_classifier(images))
    saved = json.loads((evaluators_dir / CONFIG_FILE).read_text())
    assert saved["results"] == {"x": 1.0}


def test_load_missing_files_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        load_evaluators(tmp_path)


def test_config_round_trip_ignores_unknown_keys() -> None:
    data = {**dataclasses.asdict(EvaluatorConfig.quick()), "future_field": 3}
    assert EvaluatorConfig.from_dict(data) == EvaluatorConfig.quick()


# --- metrics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ISMSynth, FDFRSynth])
def test_metrics_skip_without_evaluators(cls) -> None:
    metric = cls(MetricsConfig(names=[]))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    result = metric.compute(images, images)
    assert result.value is None
    assert result.skipped == "skipped: no weights (set metrics.synth_evaluators_weights)"


def _configured(evaluators_dir: Path) -> MetricsConfig:
    return MetricsConfig(names=[], synth_evaluators_weights=str(evaluators_dir))


def test_ism_synth_same_identity_above_other(
    evaluators_dir: Path, quick_cfg: EvaluatorConfig
) -> None:
    """Generations of the reference's identity score a higher ISM than another identity's."""
    metric = ISMSynth(_configured(evaluators_dir))
    images, labels = _heldout(quick_cfg)
    reference, same = images[labels == 0][:3], images[labels == 0][3:]
    other = images[labels == 1]
    same_result, other_result = metric.compute(same, reference), metric.compute(other, reference)
    assert same_result.ok and other_result.ok
    assert -1 <= other_result.value < same_result.value <= 1
    assert same_result.extra["n"] == len(same)


def test_ism_synth_resizes_larger_images(evaluators_dir: Path, quick_cfg: EvaluatorConfig) -> None:
    metric = ISMSynth(_configured(evaluators_dir))
    images = _images(quick_cfg, 2)
    big = torch.nn.functional.interpolate(images, size=(128, 128), mode="bilinear")
    result = metric.compute(big.clamp(0, 1), images)
    assert result.ok and result.value > 0


def test_fdfr_synth_counts_non_faces(evaluators_dir: Path, quick_cfg: EvaluatorConfig) -> None:
    metric = FDFRSynth(_configured(evaluators_dir))
    images, _ = _heldout(quick_cfg)
    faces = metric.compute(images)
    shuffled = metric.compute(patch_shuffle(images, 4, torch.Generator().manual_seed(2)))
    assert 0 <= faces.value < 0.2 < 0.8 < shuffled.value <= 1
    assert faces.extra["n"] == len(images)


# --- command line ----------------------------------------------------------------------------


def test_cli_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--quick", "--epochs", "0"]) == 2
    assert "epochs" in capsys.readouterr().out
