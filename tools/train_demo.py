#!/usr/bin/env python3
"""Trains statelm's shipped demo models on tinyshakespeare: a byte-level BPE tokenizer (vocab
4096), a ~9M-parameter Mamba-2 and a ~6M-parameter Jamba-style hybrid (Mamba + 1 attention
layer + MoE), saved in Hugging Face format with the references statelm is tested against.

Runs on the GPU machine (torch + transformers + tokenizers; not in CI):
    python3 tools/train_demo.py --data .carry/tinyshakespeare.txt --out OUT --model tokenizer
    python3 tools/train_demo.py --data ... --out OUT --model mamba2 --minutes 4
    python3 tools/train_demo.py --data ... --out OUT --model jamba --minutes 4
The tokenizer is trained once (it is deterministic) and then read from OUT/tokenizer.json.

Reproducible: the split is fixed (first 90% of the characters, cut at a line start, for training,
the rest for validation), sampling is seeded, and the learning-rate schedule runs over a step
count. With --minutes the schedule instead follows elapsed time and the log records the steps
taken; `--steps N --minutes 0` replays a run (up to GPU nondeterminism).

Each model folder gets config.json, model.safetensors (bfloat16), tokenizer.json,
tokenizer_config.json (with a chat template), generation_config.json, train_log.txt and
reference.json: the validation perplexity computed by PyTorch on the CPU in float32 from the
saved bfloat16 weights (whole validation text and its first 4096 tokens), greedy continuations
from transformers' generate(), and a chat-template rendering. Perplexity is defined as statelm's
`perplexity` command computes it: the token stream of the whole file is cut into windows of
`context` tokens, each window is run from an empty state, and every token after the first of
its window is scored; ppl = exp(mean negative log-likelihood).
"""
import argparse
import json
import math
import os
import time

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOS = "<|endoftext|>"
VOCAB = 4096
CONTEXT = 512
# Shakespeare's text is "NAME:\nspeech\n\n"; the chat template speaks the same way, so the
# model answers a user turn as the next speaker.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% else %}{{ message['role'] | upper }}:\n{{ message['content'] }}\n\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:\n{% endif %}")
PROMPTS = ["ROMEO:\n", "First Citizen:\nBefore we proceed any further, hear me speak.\n\n", "KING"]


def split_text(text):
    cut = text.index("\n", int(len(text) * 0.9)) + 1
    return text[:cut], text[cut:]


def train_tokenizer(train_text, out):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_text.splitlines(keepends=True), trainer)
    tok.save(os.path.join(out, "tokenizer.json"))
    return tok


def make_model(kind):
    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                  tie_word_embeddings=True)
    if kind == "mamba2":
        cfg = transformers.Mamba2Config(hidden_size=384, num_hidden_layers=8, state_size=64,
                                        num_heads=12, head_dim=64, expand=2, n_groups=1,
                                        conv_kernel=4, chunk_size=128, use_bias=False,
                                        use_conv_bias=True, **common)
        return transformers.Mamba2ForCausalLM(cfg)
    # Jamba-style: 4 layers, attention at layer 2, MoE (4 experts, top-2) at layers 1 and 3.
    cfg = transformers.JambaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                   num_attention_heads=8, num_key_value_heads=2, num_experts=4,
                                   num_experts_per_tok=2, expert_layer_period=2,
                                   expert_layer_offset=1, attn_layer_period=4, attn_layer_offset=2,
                                   mamba_d_state=16, mamba_d_conv=4, mamba_expand=2,
                                   mamba_dt_rank="auto", use_mamba_kernels=False,
                                   max_position_embeddings=CONTEXT * 8, **common)
    return transformers.JambaForCausalLM(cfg)


def windows(ids, context):
    return [ids[i:i + context] for i in range(0, len(ids), context) if len(ids[i:i + context]) >= 2]


@torch.no_grad()
def perplexity(model, ids, context, device, batch=16):
    """exp(mean NLL) over windows of `context` tokens, each from an empty state."""
    total, count = 0.0, 0
    ws = windows(ids, context)
    full = [w for w in ws if len(w) == context]
    groups = [full[i:i + batch] for i in range(0, len(full), batch)] + [[w] for w in ws if len(w) != context]
    for group in groups:
        x = torch.tensor(group, device=device)
        logits = model(input_ids=x).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -logp.gather(-1, x[:, 1:, None]).squeeze(-1)
        total += nll.double().sum().item()
        count += nll.numel()
    return math.exp(total / count), total, count


def add_dropout(model, p):
    """Tinyshakespeare is ~300K tokens: a 9M-parameter model memorises it within a few epochs.
    Neither architecture has hidden-state dropout in transformers, so it is added with forward
    hooks on each mixer / feed-forward output (before the residual add) and on the embeddings.
    The hooks are not saved and do nothing in eval mode: inference is the plain architecture."""
    targets = {"embeddings", "embed_tokens", "mixer", "mamba", "self_attn", "feed_forward"}

    def hook(module, inputs, output):
        if isinstance(output, tuple):
            return (torch.nn.functional.dropout(output[0], p, module.training),) + output[1:]
        return torch.nn.functional.dropout(output, p, module.training)

    for name, module in model.named_modules():
        if name.split(".")[-1] in targets:
            module.register_forward_hook(hook)


def decay_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(model, train_ids, val_ids, args, log):
    device = "cuda"
    add_dropout(model, args.dropout)
    model.to(device).train()
    opt = torch.optim.AdamW(decay_groups(model, 0.1), lr=args.lr, betas=(0.9, 0.95), fused=True)
    data = torch.tensor(train_ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(args.seed)
    val_windows = torch.tensor([w for w in windows(val_ids, CONTEXT) if len(w) == CONTEXT], device=device)
    best, best_state, start, step = float("inf"), None, time.time(), 0
    warmup = 100
    while True:
        elapsed = time.time() - start
        progress = step / args.steps if args.minutes <= 0 else max(step / args.steps, elapsed / (args.minutes * 60))
        if progress >= 1.0:
            break
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - args.context - 1, (args.batch,), generator=gen)
        x = torch.stack([data[s:s + args.context] for s in starts]).to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % args.eval_every == 0:
            model.eval()
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                val = sum(model(input_ids=val_windows[i:i + 32], labels=val_windows[i:i + 32]).loss.item()
                          for i in range(0, len(val_windows), 32)) / math.ceil(len(val_windows) / 32)
            model.train()
            mark = ""
            if val < best:
                best, mark = val, " *"
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            log(f"step {step:5d}  {time.time() - start:6.1f}s  lr {lr:.2e}  train {loss.item():.4f}  "
                f"val {val:.4f} (ppl {math.exp(val):.2f}){mark}")
    log(f"trained {step} steps in {time.time() - start:.1f}s; best validation loss {best:.4f}")
    return step, best_state


def write_configs(folder, tok):
    eos_id = tok.token_to_id(EOS)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS,
                   "pad_token": EOS, "unk_token": None, "add_bos_token": False,
                   "model_max_length": 1048576, "clean_up_tokenization_spaces": False,
                   "chat_template": CHAT_TEMPLATE}, f, indent=1)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id,
                   "do_sample": True, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 256}, f, indent=1)


def write_reference(model, folder, tok, val_ids, log):
    """Everything on the CPU in float32 from the saved bfloat16 weights: the ground truth."""
    torch.set_num_threads(min(16, os.cpu_count() or 1))
    ref = {"transformers": transformers.__version__, "torch": torch.__version__,
           "validation_file": "../tinyshakespeare-validation.txt", "perplexity": [], "greedy": []}
    for context, limit in ((CONTEXT, None), (CONTEXT, 4096), (128, 4096)):
        ids = val_ids if limit is None else val_ids[:limit]
        ppl, nll, count = perplexity(model, ids, context, "cpu")
        ref["perplexity"].append({"context": context, "limit_tokens": limit, "tokens": len(ids),
                                  "scored": count, "nll_sum": nll, "perplexity": ppl})
        log(f"validation perplexity (CPU fp32, context {context}, {len(ids)} tokens): {ppl:.4f}")
    for prompt in PROMPTS:
        ids = tok.encode(prompt).ids
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=48, do_sample=False,
                                 min_new_tokens=48, pad_token_id=0, eos_token_id=None)
        new = out[0, len(ids):].tolist()
        ref["greedy"].append({"prompt": prompt, "prompt_ids": ids, "new_tokens": new, "text": tok.decode(new)})
        log(f"greedy {prompt!r} -> {tok.decode(new)!r}")
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
    hf_tok.chat_template = CHAT_TEMPLATE
    messages = [{"role": "system", "content": "A scene in Verona."},
                {"role": "user", "content": "Who goes there?"},
                {"role": "assistant", "content": "A friend."},
                {"role": "user", "content": "Speak, friend, and enter."}]
    ref["chat"] = {"messages": messages,
                   "rendered": hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)}
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", choices=["tokenizer", "mamba2", "jamba"], required=True)
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=CONTEXT, help="training window (tokens)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    text = open(args.data, encoding="utf-8").read()
    train_text, val_text = split_text(text)
    if args.model == "tokenizer":
        train_tokenizer(train_text, args.out)
        with open(os.path.join(args.out, "tinyshakespeare-validation.txt"), "w", encoding="utf-8") as f:
            f.write(val_text)
        print("tokenizer and validation text written to", args.out)
        return
    tok = Tokenizer.from_file(os.path.join(args.out, "tokenizer.json"))
    train_ids, val_ids = tok.encode(train_text).ids, tok.encode(val_text).ids
    folder = os.path.join(args.out, f"shakespeare-{args.model}")
    os.makedirs(folder, exist_ok=True)
    log_file = open(os.path.join(folder, "train_log.txt"), "w")

    def log(msg):
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    model = make_model(args.model)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{args.model}: {n_params / 1e6:.2f}M parameters; train {len(train_ids)} tokens, "
        f"validation {len(val_ids)} tokens; context {args.context}, batch {args.batch}, lr {args.lr}, "
        f"seed {args.seed}, torch {torch.__version__}, transformers {transformers.__version__}")
    log(f"args: {vars(args)}")
    steps, best_state = train(model, train_ids, val_ids, args, log)
    log(f"replay with: --steps {steps} --minutes 0")
    # Ship bfloat16 weights; the reference is computed from exactly those weights in float32.
    model = make_model(args.model).eval()  # a fresh module: no training hooks
    model.load_state_dict(best_state)
    model = model.to("cpu", torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(folder, extra)):
            os.remove(os.path.join(folder, extra))
    tok.save(os.path.join(folder, "tokenizer.json"))
    write_configs(folder, tok)
    model = model.float().eval()
    write_reference(model, folder, tok, val_ids, log)
    log_file.close()


if __name__ == "__main__":
    main()
