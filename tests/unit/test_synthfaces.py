"""Unit tests for continual_ldu.reference.synthfaces: the procedural face world."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from continual_ldu.config import ConfigError
from continual_ldu.reference.synthfaces import (
    GENERIC_CAPTION,
    SynthFacesConfig,
    attributes,
    caption,
    iter_pretraining,
    main,
    make_identity,
    render,
    training_caption,
    write_heldout_concepts,
)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_render_same_seed_identical_bytes() -> None:
    """Rendering the same (seed, identity, image) twice gives byte-identical images."""
    first = render(make_identity(3, 7), 2, 64, seed=3)
    second = render(make_identity(3, 7), 2, 64, seed=3)
    assert first.tobytes() == second.tobytes()


def test_render_different_seed_differs() -> None:
    """Another seed gives another image for the same identity and image index."""
    assert (
        render(make_identity(0, 7), 2, 64, 0).tobytes()
        != render(make_identity(1, 7), 2, 64, 1).tobytes()
    )


def test_make_identity_independent_of_call_order() -> None:
    """An identity's traits depend only on (seed, index), not on what was generated before."""
    before = make_identity(0, 5)
    for other in range(20):
        render(make_identity(0, other), other, 64, 0)
    assert make_identity(0, 5) == before


def test_render_images_of_one_identity_differ() -> None:
    """Per-image nuisance makes every image of one identity different."""
    identity = make_identity(0, 4)
    images = [_pixels(render(identity, k, 64, 0)) for k in range(6)]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 2.0


def test_render_face_colours_stable_across_images() -> None:
    """The image centre (the face) keeps the identity's look: it is closer across images of
    one identity than between identities, despite pose, light and background."""

    def centre(index: int, k: int) -> np.ndarray:
        return _pixels(render(make_identity(0, index), k, 64, 0))[24:40, 20:44].mean((0, 1))

    within = [np.abs(centre(i, 0) - centre(i, 1)).mean() for i in range(20)]
    between = [np.abs(centre(i, 0) - centre(i + 1, 1)).mean() for i in range(20)]
    assert np.median(within) < np.median(between)


def test_make_identity_two_identities_differ() -> None:
    """Different indices give different traits and different images."""
    a, b = make_identity(0, 0), make_identity(0, 1)
    differing = [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
    assert len(differing) > 10
    assert render(a, 0, 64, 0).tobytes() != render(b, 0, 64, 0).tobytes()


def test_caption_mentions_hair_colour_and_glasses_exactly_when_present() -> None:
    """The caption names the hair colour unless bald, and glasses/beard only when worn."""
    for index in range(200):
        identity = make_identity(0, index)
        text = caption(identity)
        assert (f"{identity.hair_colour} hair" in text) == (identity.hair_style != "bald")
        assert ("hair" in text) == (identity.hair_style != "bald")
        assert ("glasses" in text) == identity.glasses
        assert ("beard" in text) == identity.beard
        assert f"{identity.eye_colour} eyes" in text and f"{identity.skin_tone} skin" in text


def test_caption_example_format() -> None:
    """Canonical captions read like the study's example sentence."""
    identity = dataclasses.replace(
        make_identity(0, 0),
        hair_style="bob",
        hair_colour="red",
        eye_colour="green",
        glasses=True,
        beard=False,
        skin_tone="dark",
    )
    expected = "a photo of a person with bob cut red hair, green eyes, glasses and dark skin"
    assert caption(identity) == expected


def _caption_kind(identity_phrases: list[str], text: str) -> str:
    if text == "":
        return "empty"
    if text == GENERIC_CAPTION:
        return "generic"
    present = sum(phrase in text for phrase in identity_phrases)
    return "full" if present == len(identity_phrases) else "subset"


def test_training_caption_mix_proportions() -> None:
    """Over 2000 draws the caption kinds are within 3 points of 65/20/5/10 percent."""
    rng = np.random.default_rng(0)
    identities = [make_identity(0, i) for i in range(50)]
    kinds = Counter()
    for draw in range(2000):
        identity = identities[draw % len(identities)]
        kinds[_caption_kind(attributes(identity), training_caption(identity, rng))] += 1
    for kind, share in {"full": 0.65, "subset": 0.20, "generic": 0.05, "empty": 0.10}.items():
        assert abs(kinds[kind] / 2000 - share) <= 0.03, (kind, kinds)


def test_write_heldout_concepts_layout(tmp_path: Path) -> None:
    """Each held-out concept gets set_A/B/C with 4 PNGs at the resolution, plus its caption."""
    cfg = SynthFacesConfig(resolution=64, num_pretrain_identities=5, num_heldout_identities=2)
    concepts = write_heldout_concepts(cfg, tmp_path)
    assert [c.name for c in concepts] == ["id_000", "id_001"]
    names = set()
    for set_name in ("set_A", "set_B", "set_C"):
        files = sorted((concepts[0] / set_name).glob("*.png"))
        assert len(files) == 4
        assert all(Image.open(f).size == (64, 64) for f in files)
        names |= {f.name for f in files}
    assert len(names) == 12  # disjoint image indices across the three sets
    text = (concepts[0] / "caption.txt").read_text().strip()
    assert text == caption(make_identity(0, 5))  # the first identity after pretraining


def test_iter_pretraining_yields_every_image() -> None:
    """Pretraining yields identities x images (image, caption, index), identity by identity."""
    cfg = SynthFacesConfig(num_pretrain_identities=3, images_per_pretrain_identity=2)
    items = list(iter_pretraining(cfg))
    assert [index for _, _, index in items] == [0, 0, 1, 1, 2, 2]
    assert all(isinstance(img, Image.Image) and img.size == (64, 64) for img, _, _ in items)


def test_render_128_works() -> None:
    """Rendering at 128 gives a 128x128 RGB image; prints the time per image at 64 and 128."""
    identity = make_identity(0, 1)
    for resolution in (64, 128):
        start = time.perf_counter()
        images = [render(identity, k, resolution, 0) for k in range(10)]
        per_image = (time.perf_counter() - start) / len(images) * 1000
        print(f"synthfaces render at {resolution}px: {per_image:.1f} ms per image")
    assert images[0].size == (128, 128) and images[0].mode == "RGB"


def test_config_validate_reports_problems() -> None:
    """Bad values are all reported, and check() raises ConfigError listing them."""
    cfg = SynthFacesConfig(seed=-1, resolution=50, images_per_set=0)
    assert len(cfg.validate()) == 3
    with pytest.raises(ConfigError):
        cfg.check()
    assert SynthFacesConfig().validate() == []


def test_main_writes_contact_sheet(tmp_path: Path) -> None:
    """The CLI writes the concepts and a contact sheet with one row per identity."""
    assert main([str(tmp_path), "--heldout", "2"]) == 0
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.size == (12 * 130 + 2, 2 * 130 + 2)
    assert (tmp_path / "id_001" / "set_C").is_dir()
