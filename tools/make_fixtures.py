#!/usr/bin/env python3
"""Tiny random-weight checkpoints of every supported architecture, with reference outputs
computed by Hugging Face transformers (the numerical ground truth statelm is tested against).

Runs where torch + transformers are installed (the GPU device machine; no internet needed):
    python3 tools/make_fixtures.py --out tests/fixtures/models
Everything runs on the CPU in float32 so the reference is deterministic.

Each model folder gets config.json, model.safetensors (float32) and reference.json:
    {"transformers": version, "sequences": [{"input_ids": [...], "logits": "logits_0.bin"}],
     "greedy": {"prompt": [...], "new_tokens": [...]}}
logits_<i>.bin is float32 little-endian [len(input_ids) x vocab] of one full forward.
A mamba_ssm-layout copy (original config keys and tensor names) is written for Mamba-1/2.
"""
import argparse
import json
import math
import os
import shutil

import torch
import transformers
from safetensors.torch import load_file, save_file


def spread_weights(model, seed):
    """transformers' init gives near-uniform logits (std 0.02) and default values (A_log = log n,
    D = 1, norm weights = 1) that a loader could skip unnoticed. Every parameter is moved away
    from its default: matrices widened so tests see real margins between tokens, norms and D
    random, A_log and the time-step biases perturbed around their init (which keeps the scan
    stable)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("A_log") or name.endswith("dt_bias") or "dt_proj.bias" in name:
                p.add_(0.3 * noise)
            elif p.ndim >= 2:
                p.copy_(noise / math.sqrt(p.shape[-1]))
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            else:  # D, conv and projection biases
                p.copy_(0.5 * noise)


def write_reference(model, folder, vocab, seed, lengths=(97, 23, 1), greedy_tokens=16):
    g = torch.Generator().manual_seed(seed + 1)
    seqs = []
    for i, n in enumerate(lengths):
        ids = torch.randint(0, vocab, (1, n), generator=g)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float().contiguous()
        logits.numpy().astype("<f4").tofile(os.path.join(folder, f"logits_{i}.bin"))
        seqs.append({"input_ids": ids[0].tolist(), "logits": f"logits_{i}.bin",
                     "shape": list(logits.shape)})
    prompt = torch.tensor([seqs[0]["input_ids"]])
    with torch.no_grad():
        # An explicit all-ones mask: without one, generate() infers padding from pad_token_id and
        # would mask out any prompt token that happens to equal it.
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=greedy_tokens, do_sample=False,
                             min_new_tokens=greedy_tokens, pad_token_id=0, eos_token_id=None)
    ref = {"transformers": transformers.__version__, "torch": torch.__version__,
           "sequences": seqs,
           "greedy": {"prompt": seqs[0]["input_ids"], "new_tokens": out[0, prompt.shape[1]:].tolist()}}
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)


def save(model, folder):
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(folder, extra)
        if os.path.exists(p):
            os.remove(p)
    names = sorted(load_file(os.path.join(folder, "model.safetensors")).keys())
    print(folder, len(names), "tensors:", names[:40])


def to_mamba_ssm_layout(src, dst, config):
    """The original state-spaces/mamba layout: d_model/n_layer/ssm_cfg and backbone.embedding."""
    os.makedirs(dst, exist_ok=True)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    renamed = {k.replace("backbone.embeddings.", "backbone.embedding."): v.contiguous()
               for k, v in tensors.items()}
    if "lm_head.weight" not in renamed:
        renamed["lm_head.weight"] = renamed["backbone.embedding.weight"].clone()
    save_file(renamed, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    for name in os.listdir(src):
        if name.startswith("logits_") or name == "reference.json":
            shutil.copy(os.path.join(src, name), dst)


class GroupedGatedRMSNorm(torch.nn.Module):
    """mamba_ssm's RMSNormGated (norm_before_gate=False): y = x * silu(z), normalised per group of
    d_inner / ngroups channels. transformers' Mamba2 normalises over all of d_inner instead, so
    the mamba_ssm-layout fixture needs its own reference when ngroups > 1."""

    def __init__(self, weight, group_size, eps):
        super().__init__()
        self.weight, self.group_size, self.eps = weight, group_size, eps

    def forward(self, x, gate=None):
        x = x.float() * torch.nn.functional.silu(gate.float())
        shape = x.shape
        x = x.view(*shape[:-1], shape[-1] // self.group_size, self.group_size)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.view(shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/models")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32)
    out = args.out

    # Mamba-1: vocab 216 = 211 padded to a multiple of 8 (what mamba_ssm does).
    cfg = transformers.MambaConfig(vocab_size=216, hidden_size=48, state_size=7, num_hidden_layers=2,
                                   conv_kernel=4, expand=2, time_step_rank="auto", use_bias=False,
                                   use_conv_bias=True, tie_word_embeddings=True,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    m = transformers.MambaForCausalLM(cfg).eval()
    spread_weights(m, 1)
    save(m, f"{out}/mamba-tiny")
    write_reference(m, f"{out}/mamba-tiny", 211, 1)
    to_mamba_ssm_layout(f"{out}/mamba-tiny", f"{out}/mamba-tiny-ssm", {
        "d_model": 48, "n_layer": 2, "vocab_size": 211, "ssm_cfg": {"d_state": 7, "d_conv": 4, "expand": 2},
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 8, "tie_embeddings": True})

    # Mamba-2: 8 heads of 16, 2 groups, d_state 12, chunk 16 so 97 tokens cross 6 chunks and
    # end inside one.
    cfg = transformers.Mamba2Config(vocab_size=213, hidden_size=64, state_size=12, num_hidden_layers=2,
                                    num_heads=8, head_dim=16, expand=2, n_groups=2, conv_kernel=4,
                                    chunk_size=16, use_bias=False, use_conv_bias=True,
                                    tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    m = transformers.Mamba2ForCausalLM(cfg).eval()
    spread_weights(m, 2)
    save(m, f"{out}/mamba2-tiny")
    write_reference(m, f"{out}/mamba2-tiny", 213, 2)
    to_mamba_ssm_layout(f"{out}/mamba2-tiny", f"{out}/mamba2-tiny-ssm", {
        "d_model": 64, "n_layer": 2, "vocab_size": 213,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 12, "d_conv": 4, "expand": 2, "headdim": 16,
                    "ngroups": 2, "chunk_size": 16},
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 1, "tie_embeddings": False})
    for layer in m.backbone.layers:
        norm = layer.mixer.norm
        layer.mixer.norm = GroupedGatedRMSNorm(norm.weight, 128 // 2, norm.variance_epsilon)
    write_reference(m, f"{out}/mamba2-tiny-ssm", 213, 2)

    # Jamba: attention at layer 2 (period 4, offset 2), MoE at layers 1 and 3 (period 2, offset 1).
    cfg = transformers.JambaConfig(vocab_size=215, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                                   num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=1,
                                   attn_layer_period=4, attn_layer_offset=2, mamba_d_state=6,
                                   mamba_d_conv=4, mamba_expand=2, mamba_dt_rank="auto",
                                   use_mamba_kernels=False, tie_word_embeddings=False,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
    m = transformers.JambaForCausalLM(cfg).eval()
    spread_weights(m, 3)
    save(m, f"{out}/jamba-tiny")
    write_reference(m, f"{out}/jamba-tiny", 215, 3)

    # Jamba, another placement: 6 layers, attention at 0 and 3 (period 3, offset 0), MoE of 5
    # experts top-3 at 2 and 5 (period 3, offset 2), tied embeddings.
    cfg = transformers.JambaConfig(vocab_size=209, hidden_size=48, intermediate_size=80, num_hidden_layers=6,
                                   num_attention_heads=6, num_key_value_heads=3, num_experts=5,
                                   num_experts_per_tok=3, expert_layer_period=3, expert_layer_offset=2,
                                   attn_layer_period=3, attn_layer_offset=0, mamba_d_state=5,
                                   mamba_d_conv=3, mamba_expand=2, mamba_dt_rank=5,
                                   use_mamba_kernels=False, tie_word_embeddings=True,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
    m = transformers.JambaForCausalLM(cfg).eval()
    spread_weights(m, 5)
    save(m, f"{out}/jamba-tiny-b")
    write_reference(m, f"{out}/jamba-tiny-b", 209, 5)

    # Llama with GQA (4 query heads, 2 KV heads) and RoPE.
    cfg = transformers.LlamaConfig(vocab_size=217, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    spread_weights(m, 4)
    save(m, f"{out}/llama-tiny")
    write_reference(m, f"{out}/llama-tiny", 217, 4)

    # Llama-3 style: llama3 RoPE scaling, biases on attention and MLP, tied embeddings.
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    common = dict(vocab_size=219, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    try:  # transformers >= 5
        cfg = transformers.LlamaConfig(rope_parameters=rope, **common)
    except TypeError:
        cfg = transformers.LlamaConfig(rope_theta=rope["rope_theta"], rope_scaling=rope, **common)
    m = transformers.LlamaForCausalLM(cfg).eval()
    spread_weights(m, 6)
    save(m, f"{out}/llama3-tiny")
    write_reference(m, f"{out}/llama3-tiny", 219, 6)


if __name__ == "__main__":
    main()
