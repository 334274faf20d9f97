"""The real CLIP BPE vocabulary, converted offline for ``transformers.CLIPTokenizer``.

The ``open-clip-torch`` wheel ships OpenAI's ``bpe_simple_vocab_16e6.txt.gz``; it holds the
merges from which CLIP's 49,408-token vocabulary is derived (OpenAI's ``SimpleTokenizer``
construction). We rebuild ``vocab.json`` and ``merges.txt`` from it so that a tokenizer with
exactly the ids of ``openai/clip-vit-large-patch14`` exists with no hub access.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

NUM_MERGES = 49152 - 256 - 2  # OpenAI's SimpleTokenizer keeps this many merge rules
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in codes], strict=True))


def bpe_vocab_path() -> Path:
    """Locate the BPE file inside the installed ``open_clip`` package without importing it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the CLIP vocabulary needs the 'open-clip-torch' package: pip install open-clip-torch"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise ValueError(f"{path} is missing from the installed open-clip-torch wheel")
    return path


def write_clip_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` for CLIP into ``folder``; return both paths."""
    lines = gzip.open(bpe_vocab_path(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(pair) for pair in merges] + [BOS_TOKEN, EOS_TOKEN]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}), encoding="utf-8")
    merges_file.write_text(
        "#version: 0.2\n" + "\n".join(" ".join(p) for p in merges) + "\n", encoding="utf-8"
    )
    return vocab_file, merges_file
