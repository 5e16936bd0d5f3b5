#!/usr/bin/env python3
"""Reference token ids for the Gemma-3 GGUF tokenizer test (tests/gemma3_gguf.rs).

Two independent encoders are built from the GGUF's `tokenizer.ggml.*` metadata and must agree on
every string before anything is written:

1. Google's `sentencepiece` library, with a `ModelProto` rebuilt from the GGUF vocabulary: BPE
   with byte fallback, pieces/scores/types as stored (GGUF token types are SentencePiece's), no
   dummy prefix, whitespace escaped to U+2581. The GGUF spells the all-space user-defined pieces
   with real spaces ("  "); SentencePiece matches them on escaped text, so they are respelled
   "▁▁". SentencePiece never parses control tokens out of text, so the text is split on them
   here first, as llama.cpp (`parse_special`) and Hugging Face tokenizers do.
2. transformers' own GGUF tokenizer converter (`gemma_tokenizer` + `add_gguf_special_tokens`),
   called directly so that torch is not needed.

The cases are the hand-picked CASES plus 16 seeded random mixes of vocabulary words, scripts,
whitespace and special tokens. BOS is prepended (`tokenizer.ggml.add_bos_token` is true). Output: JSON with the GGUF's SHA-256,
and for each case the text and its ids.

Usage: python3 gemma3_reference_ids.py MODEL.gguf OUT.json
Needs: gguf, sentencepiece, protobuf, transformers, tokenizers (no torch).
"""

import hashlib
import json
import re
import sys

from gguf import GGUFReader
from sentencepiece import SentencePieceProcessor
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

CASES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "two  spaces,   three, and    four",
    " leading space and trailing space ",
    "line one\nline two\n\nparagraph\n\n\nend\n",
    "tabs\tand\t\tdouble tabs",
    "digits 0123456789 and 2024-11-28, pi=3.14159",
    "naïve café, Straße, 東京タワー, Привет мир, 🚀🤖✨ emoji",
    "fn main() {\n    let x: Vec<u32> = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n",
    "<start_of_turn>user\nWhat is the pass key?<end_of_turn>\n<start_of_turn>model\n",
    "html <table><tr><td>cell</td></tr></table> and <b>bold</b>",
    "rare bytes: \u0001\u007f and a control \u200b zero-width",
    "byte fallback: \U00020000 \U00013000 \ua66e\ua66e end",
    "",
]


def fuzz_cases(tokens, n=16, seed=0):
    """Random mixes of vocabulary words, scripts, spacing and special tokens (seeded)."""
    import random

    rng = random.Random(seed)
    pieces = list("abcXYZ      \n\n\t0123456789.,;:!?()[]{}<>-_'\"/\\")
    pieces += list("éàüößçñ東京大阪タワーПриветअनुच्छेद🚀🤖✨\U00020000\ua66e")
    pieces += ["<b>", "</td>", "<start_of_turn>", "<end_of_turn>", "  ", "   "]
    words = [w.replace("\u2581", " ") for w in tokens[494:60000:37] if "<" not in w]
    out = []
    for _ in range(n):
        k = rng.randint(5, 40)
        out.append("".join(rng.choice(pieces if rng.random() < 0.5 else words) for _ in range(k)))
    return out


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(path, out):
    r = GGUFReader(path)
    field = lambda k: r.fields[k].contents()
    assert field("tokenizer.ggml.model") == "llama"
    tokens = field("tokenizer.ggml.tokens")
    scores = field("tokenizer.ggml.scores")
    types = field("tokenizer.ggml.token_type")
    bos = field("tokenizer.ggml.bos_token_id")
    eos = field("tokenizer.ggml.eos_token_id")
    unk = field("tokenizer.ggml.unknown_token_id")
    pad = field("tokenizer.ggml.padding_token_id")
    add_space_prefix = field("tokenizer.ggml.add_space_prefix")
    assert field("tokenizer.ggml.add_bos_token") is True

    # 1. sentencepiece.
    m = sp_pb2.ModelProto()
    m.trainer_spec.model_type = sp_pb2.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(tokens)
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id = unk, bos
    m.trainer_spec.eos_id, m.trainer_spec.pad_id = eos, pad
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = add_space_prefix
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for i, (t, s, ty) in enumerate(zip(tokens, scores, types)):
        p = m.pieces.add()
        p.piece = "\u2581" * len(t) if ty == 4 and t and not t.strip(" ") else t
        p.score = s
        p.type = 2 if i == unk else ty
    sp = SentencePieceProcessor()
    sp.LoadFromSerializedProto(m.SerializeToString())
    control = sorted((t for t, ty in zip(tokens, types) if ty == 3), key=len, reverse=True)
    split = re.compile("(" + "|".join(map(re.escape, control)) + ")")
    token_id = {t: i for i, t in enumerate(tokens)}

    def sp_encode(text):
        ids = [bos]
        for part in split.split(text):
            if part in token_id and types[token_id[part]] == 3:
                ids.append(token_id[part])
            elif part:
                ids.extend(sp.encode(part))
        return ids

    # 2. transformers' converter.
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        add_gguf_special_tokens,
        gemma_tokenizer,
    )

    d = {"tokenizer_type": "llama", "tokens": tokens, "scores": scores, "token_type": types}
    hf = add_gguf_special_tokens(gemma_tokenizer(d), d).backend_tokenizer

    def hf_encode(text):
        return [bos] + hf.encode(text, add_special_tokens=False).ids

    cases = []
    for text in CASES + fuzz_cases(tokens):
        a, b = sp_encode(text), hf_encode(text)
        if a != b:
            sys.exit(f"encoders disagree on {text!r}:\n sentencepiece {a}\n transformers  {b}")
        cases.append({"text": text, "ids": a, "pieces": [tokens[i] for i in a]})
    with open(out, "w", encoding="utf-8") as f:
        json.dump(
            {
                "gguf_sha256": sha256_file(path),
                "generator": "crates/tokenize/scripts/gemma3_reference_ids.py (sentencepiece == transformers)",
                "bos_prepended": True,
                "cases": cases,
            },
            f,
            ensure_ascii=False,
            indent=1,
        )
        f.write("\n")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
