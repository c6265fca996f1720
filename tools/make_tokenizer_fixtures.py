#!/usr/bin/env python3
"""Builds the tokenizer fixtures the C++ tokenizer is tested against, with HF `tokenizers`.

Run once on a machine that has the `tokenizers` Python package (0.23.x); no internet needed:

    python3 tools/make_tokenizer_fixtures.py --out tests/fixtures/tokenizer \
        --corpus .carry/tinyshakespeare.txt

It writes into --out:
  llama-style.tokenizer.json       SentencePiece-style BPE as Llama-2 ships it: normalizer
                                   Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, byte
                                   fallback, <s> added by a TemplateProcessing post-processor.
  metaspace-style.tokenizer.json   the same model behind the newer Metaspace pre-tokenizer
                                   (prepend_scheme "first", split false) and Metaspace decoder.
  <name>.expected.json             for gpt-neox-20b, llama-style and metaspace-style: the ids of
                                   every text of hard_texts.json with and without special
                                   tokens, the decodes of those ids, and decodes of random id
                                   sequences (which exercise U+FFFD for broken UTF-8).

Why the model is built by hand after training: Llama-2's vocabulary has the 256 byte tokens
<0x00>..<0xFF> in the model vocab (not as added tokens) right after <unk> <s> </s>; the trainer
cannot place them there, so we train the merges, then lay out the vocab ourselves. Training is
deterministic: one fixed list of lines, a fixed vocab size, and BPE ties broken by pair order.
"""
import argparse
import json
import os
import random
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tokenizers  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers  # noqa: E402
from tokenizers import pre_tokenizers, processors, trainers  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space
SPECIALS = ["<unk>", "<s>", "</s>"]
VOCAB_SIZE = 1000


def corpus_lines(path):
    with open(path, encoding="utf-8") as f:
        # Newlines are dropped on purpose: "\n" then is not in the vocab and must go through
        # byte fallback (<0x0A>), as it does in Llama-2.
        return [line.rstrip("\n") for line in f if line.strip()]


def train_merges(lines):
    """Trains BPE on words split the SentencePiece way; returns (tokens in id order, merges)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM_SPACE, prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIALS) - 256,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    state = json.loads(tok.to_str())["model"]
    vocab = state["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = []
    for m in state["merges"]:
        # 0.20+ writes [a, b]; older versions wrote "a b".
        a, b = (m.split(" ", 1) if isinstance(m, str) else m)
        merges.append((a, b))
    return tokens, merges


def build_model(tokens, merges):
    vocab = {}
    for t in SPECIALS + ["<0x%02X>" % b for b in range(256)] + tokens:
        if t not in vocab:
            vocab[t] = len(vocab)
    return models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)


def add_specials(tok):
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    bos = tok.token_to_id("<s>")
    assert bos == 1, bos
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", bos)]
    )


def llama_style(tokens, merges):
    tok = Tokenizer(build_model(tokens, merges))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPM_SPACE), normalizers.Replace(" ", SPM_SPACE)])
    add_specials(tok)
    tok.decoder = decoders.Sequence([
        decoders.Replace(SPM_SPACE, " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
        decoders.Strip(content=" ", left=1, right=0),
    ])
    return tok


def metaspace_style(tokens, merges):
    tok = Tokenizer(build_model(tokens, merges))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM_SPACE, prepend_scheme="first", split=False)
    add_specials(tok)
    # No Fuse: the Metaspace decoder then sees many tokens and must strip only the first one's space.
    tok.decoder = decoders.Sequence([
        decoders.ByteFallback(),
        decoders.Metaspace(replacement=SPM_SPACE, prepend_scheme="first", split=False),
    ])
    return tok


def expectations(tok, texts, seed):
    cases = []
    for t in texts:
        ids = tok.encode(t["text"], add_special_tokens=True).ids
        ids_ns = tok.encode(t["text"], add_special_tokens=False).ids
        cases.append({
            "name": t["name"],
            "text": t["text"],
            "ids": ids,
            "ids_no_special": ids_ns,
            "decode": tok.decode(ids, skip_special_tokens=False),
            "decode_skip_special": tok.decode(ids, skip_special_tokens=True),
            "decode_no_special": tok.decode(ids_ns, skip_special_tokens=False),
        })
    # Random id sequences: split byte tokens and lone continuation bytes must become U+FFFD
    # exactly where the library puts them; low ids (bytes, specials) are drawn more often.
    rng = random.Random(seed)
    n = tok.get_vocab_size(with_added_tokens=True)
    decode_cases = []
    for i in range(60):
        length = rng.randint(1, 24)
        ids = [rng.randrange(0, 300) if rng.random() < 0.5 else rng.randrange(0, n) for _ in range(length)]
        skip = bool(i % 2)
        decode_cases.append({"ids": ids, "skip_special_tokens": skip, "text": tok.decode(ids, skip_special_tokens=skip)})
    return cases, decode_cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "tokenizer"))
    ap.add_argument("--corpus", required=True, help="training text (tinyshakespeare.txt)")
    ap.add_argument("--texts", default=None, help="hard_texts.json (default: <out>/hard_texts.json)")
    ap.add_argument("--neox", default=None, help="gpt-neox-20b tokenizer.json (default: <out>/gpt-neox-20b.tokenizer.json)")
    args = ap.parse_args()
    texts_path = args.texts or os.path.join(args.out, "hard_texts.json")
    neox_path = args.neox or os.path.join(args.out, "gpt-neox-20b.tokenizer.json")
    with open(texts_path, encoding="utf-8") as f:
        texts = json.load(f)
    os.makedirs(args.out, exist_ok=True)

    tokens, merges = train_merges(corpus_lines(args.corpus))
    built = {"llama-style": llama_style(tokens, merges), "metaspace-style": metaspace_style(tokens, merges)}
    for name, tok in built.items():
        tok.save(os.path.join(args.out, name + ".tokenizer.json"), pretty=True)

    # Expectations come from the files as saved, so they describe exactly what is committed.
    sources = {"gpt-neox-20b": neox_path}
    sources.update({name: os.path.join(args.out, name + ".tokenizer.json") for name in built})
    for seed, (name, path) in enumerate(sources.items()):
        tok = Tokenizer.from_file(path)
        cases, decode_cases = expectations(tok, texts, seed=1000 + seed)
        doc = {
            "tokenizer": os.path.basename(path),
            "library": "tokenizers (python) " + tokenizers.__version__,
            "vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "cases": cases,
            "decode_cases": decode_cases,
        }
        out = os.path.join(args.out, name + ".expected.json")
        with open(out, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print("wrote %s (%d cases, vocab %d)" % (out, len(cases), doc["vocab_size"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
