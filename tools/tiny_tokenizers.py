"""The tiny model's two tokenizers, written as vocabulary files and loaded as real checkpoints are.

Vocabulary files (``vocab.json`` + ``merges.txt`` for CLIP, ``spiece.model`` for T5) are the one
input that transformers 4 and 5 both accept: v4's ``CLIPTokenizer(vocab=..., merges=...)`` does not
exist, and v5 has no slow tokenizers. Loading them with ``from_pretrained`` also takes the path the
real FLUX.1-Kontext-dev files take (its model_index names ``CLIPTokenizer`` and ``T5TokenizerFast``).
"""

from __future__ import annotations

import io
import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512

# Words for the T5 tokenizer's training corpus: edit instructions of the kind validators send.
WORDS = (
    "add remove make change turn replace put give the a an to of on in with and into more less "
    "red blue green yellow purple orange black white golden silver warm cold bright dark glow "
    "hat person cat dog sky tree car house face hair background light shadow water fire snow "
    "style painting photo sketch cartoon realistic vintage neon contrast tint highlights color"
).split()


def _corpus(lines: int = 600) -> list[str]:
    """Deterministic sentences over ``WORDS`` (no randomness: the tokenizer must rebuild identically)."""
    out = []
    for i, combo in enumerate(itertools.islice(itertools.product(WORDS, repeat=3), 0, lines * 7, 7)):
        out.append(" ".join(combo) + (f" {i % 97}" if i % 5 == 0 else ""))
    return out


def t5_spiece_model() -> bytes:
    """A sentencepiece unigram model trained in-process (no download); one thread, so the bytes repeat."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=buffer, model_type="unigram", vocab_size=256,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1,
        hard_vocab_limit=False, minloglevel=2,
    )
    return buffer.getvalue()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocab with every byte alone and word-final, plus merges for common words."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in sorted(set(WORDS)):
        current = word[0]
        for index, char in enumerate(word[1:], start=1):
            right = char + ("</w>" if index == len(word) - 1 else "")
            merges.append((current, right))
            current = current + right
            vocab.setdefault(current, len(vocab))
    return vocab, list(dict.fromkeys(merges))


def write_vocab_files(directory: Path) -> None:
    """CLIP's ``vocab.json`` and ``merges.txt`` and T5's ``spiece.model``, in the formats of real checkpoints."""
    vocab, merges = clip_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    # The slow CLIPTokenizer skips the first line: real merges files start with a version header.
    lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (directory / "spiece.model").write_bytes(t5_spiece_model())


def build_tokenizers() -> tuple[Any, Any]:
    """``(CLIPTokenizer, T5TokenizerFast)`` loaded from freshly written vocabulary files.

    Both names exist in transformers 4 and 5; v4 gives the slow, Python CLIP tokenizer (as the real
    model loads there) and v5 the tokenizers-backed one.
    """
    import transformers
    from transformers import CLIPTokenizer

    # v5 keeps T5TokenizerFast only as a lazy alias of T5Tokenizer, which type checkers cannot see.
    t5_class = getattr(transformers, "T5TokenizerFast")
    with tempfile.TemporaryDirectory(prefix="tiny-tokenizers-") as tmp:
        source = Path(tmp)
        write_vocab_files(source)
        clip = CLIPTokenizer.from_pretrained(source, model_max_length=CLIP_MAX_LENGTH)
        # legacy=True is both versions' default for T5; saying it keeps v4 from warning about it.
        t5 = t5_class.from_pretrained(source, model_max_length=T5_MAX_LENGTH, extra_ids=0, legacy=True)
    return clip, t5
