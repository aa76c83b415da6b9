#!/usr/bin/env python3
"""Hugging Face parity of kiln::nn's LLaMA-family blocks: builds small random models with
transformers' own classes (a LLaMA 3.1 with its rope scaling, a Qwen3 with per-head query and
key norms and YaRN, a Mistral with a sliding window, a Qwen2 with q, k and v biases, a Gemma
with GeGLU and one key-value head, a Gemma 3 with sandwich norms and local and global layers; a
Gemma 2 with soft-capped attention scores and logits; an OLMo 2 with norms after each branch only
and q and k norms across heads;
a GPT-NeoX with parallel attention and FFN and half of each head turned; a Phi-2 with both
branches after one norm and a head with a bias; a BLOOM with ALiBi
over six heads and a norm after its embedding; grouped heads in the first four; and two T5
encoder-decoders, v1.1's gated GELU and v1.0's ReLU with its scaled decoder output, with
learned relative position biases, heads of 12 in a width of 32, and padded encoder inputs; and
two LLaMAs read past their trained length, with dynamic NTK and with LongRoPE), in f64 (Gemma's norms compute in f32 even so), and writes into DIR/<model>/ what
save_pretrained writes (model.safetensors, in f32, or in bf16 for Mistral and Gemma as their
checkpoints ship; LLaMA's sharded, with model.safetensors.index.json; config.json), the token ids and logits (reference.safetensors) and what Kiln
needs to know (config.txt). tests/parity/hf_parity.cc then builds the same models from kiln::nn,
loads model.safetensors, and compares its logits.

    python hf_parity.py DIR     (a Python with torch and transformers)

Exits 77 (CTest's skip) when transformers cannot be imported.
"""
import copy
import os
import sys

try:
    import torch
    from safetensors.torch import save_file
    from transformers import (AutoModelForCausalLM, BloomConfig, Gemma2Config, Gemma3TextConfig,
                              GemmaConfig, PhiConfig, GPTNeoXConfig,
                              LlamaConfig, MistralConfig, Olmo2Config, Qwen2Config, Qwen3Config,
                              T5Config,
                              T5ForConditionalGeneration)
    import transformers
except ImportError as e:
    print(f"[hf-parity] SKIPPED: cannot import torch, safetensors and transformers ({e})")
    sys.exit(77)

BATCH, LENGTH = 2, 24
SHAPE = dict(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
             num_attention_heads=4, head_dim=8, num_key_value_heads=2, tie_word_embeddings=False,
             initializer_range=0.2)


def models():
    """(name, config, what Kiln needs to know beyond the shapes) for each model."""
    llama3 = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                  high_freq_factor=4.0, original_max_position_embeddings=16)
    yield ("llama3",
           LlamaConfig(**SHAPE, rms_norm_eps=1e-5, max_position_embeddings=128,
                       rope_parameters=llama3),
           dict(rope="llama3", theta=500000.0, factor=8.0, original=16, low=1.0, high=4.0))
    yarn = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                original_max_position_embeddings=8)
    yield ("qwen3",
           Qwen3Config(**SHAPE, rms_norm_eps=1e-6, max_position_embeddings=32,
                       rope_parameters=yarn),
           dict(rope="yarn", theta=10000.0, factor=4.0, original=8, qk_norm=1))
    yield ("mistral",
           MistralConfig(**SHAPE, rms_norm_eps=1e-5, sliding_window=5, max_position_embeddings=256,
                         rope_parameters=dict(rope_type="default", rope_theta=1000.0)),
           dict(rope="none", theta=1000.0, window=5, weights="bf16"))
    # Qwen2: biases on the q, k and v projections only.
    yield ("qwen2",
           Qwen2Config(**SHAPE, rms_norm_eps=1e-6, max_position_embeddings=256,
                       rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
           dict(rope="none", theta=1000000.0, qkv_bias=1))
    # Gemma: GeGLU, one key-value head, RMS norms scaling by 1 + weight, embeddings scaled by
    # sqrt(hidden).
    yield ("gemma",
           GemmaConfig(**{**SHAPE, "num_key_value_heads": 1}, rms_norm_eps=1e-6,
                       hidden_activation="gelu_pytorch_tanh", max_position_embeddings=256),
           dict(rope="none", theta=10000.0, activation="geglu", norm_offset=1,
                embed_scale=SHAPE["hidden_size"] ** 0.5, weights="bf16"))
    # Gemma 3: a sliding-window layer then a global one, each with its own rope base; norms
    # before and after each branch; per-head q/k norms; scores scaled by 1 / sqrt(16), not by
    # the head depth 8's.
    rope = dict(sliding_attention=dict(rope_type="default", rope_theta=10000.0),
                full_attention=dict(rope_type="default", rope_theta=1000000.0))
    yield ("gemma3",
           Gemma3TextConfig(**SHAPE, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
                            max_position_embeddings=256, sliding_window=5,
                            layer_types=["sliding_attention", "full_attention"],
                            query_pre_attn_scalar=16, rope_parameters=rope),
           dict(rope="none", theta=10000.0, thetas="10000,1000000", windows="5,0",
                activation="geglu", norm_offset=1, qk_norm=1, post_norms=1, attention_scale=0.25,
                embed_scale=SHAPE["hidden_size"] ** 0.5))
    # Gemma 2: Gemma 3's sandwich norms and local and global layers (one rope base), no q/k
    # norms, and soft-capped attention scores and logits (caps small enough to bend these).
    yield ("gemma2",
           Gemma2Config(**SHAPE, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
                        max_position_embeddings=256, sliding_window=5,
                        layer_types=["sliding_attention", "full_attention"],
                        query_pre_attn_scalar=16, attn_logit_softcapping=1.5,
                        final_logit_softcapping=4.0,
                        rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
           dict(rope="none", theta=10000.0, windows="5,0", activation="geglu", norm_offset=1,
                post_norms=1, attention_scale=0.25, attention_softcap=1.5, final_softcap=4.0,
                embed_scale=SHAPE["hidden_size"] ** 0.5))
    # OLMo 2: norms after each branch and none before it; q and k norms over the whole
    # projection (all heads, the key's two), not per head.
    yield ("olmo2",
           Olmo2Config(**SHAPE, rms_norm_eps=1e-6, max_position_embeddings=256,
                       rope_parameters=dict(rope_type="default", rope_theta=500000.0),
                       eos_token_id=None, pad_token_id=None, bos_token_id=None),
           dict(rope="none", theta=500000.0, qk_norm=1, qk_norm_across_heads=1, post_norms=1,
                input_norms=0))
    # GPT-NeoX (Pythia): attention and MLP side by side, LayerNorms, biases, exact GELU, rotary
    # embedding of half of each head, the q, k, v projections fused and interleaved by head.
    neox = {k: v for k, v in SHAPE.items() if k not in ("head_dim", "num_key_value_heads")}
    yield ("neox",
           GPTNeoXConfig(**neox, layer_norm_eps=1e-5, hidden_act="gelu",
                         max_position_embeddings=256, use_parallel_residual=True,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                              partial_rotary_factor=0.5)),
           dict(family="neox", rope="none", theta=10000.0, rotary_dims=4, norm="layer",
                activation="gelu", bias=1, parallel=1, kv_heads=SHAPE["num_attention_heads"]))
    # Phi-2: attention and MLP side by side after one shared LayerNorm, biases everywhere (the
    # head's too), GELU's tanh form, rotary embedding of half of each head.
    phi = {k: v for k, v in SHAPE.items() if k not in ("head_dim", "num_key_value_heads")}
    yield ("phi",
           PhiConfig(**phi, layer_norm_eps=1e-5, hidden_act="gelu_new",
                     max_position_embeddings=256,
                     rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                          partial_rotary_factor=0.5)),
           dict(family="phi", rope="none", theta=10000.0, rotary_dims=4, norm="layer",
                activation="gelu_tanh", bias=1, parallel=1, head_bias=1,
                kv_heads=SHAPE["num_attention_heads"]))
    # BLOOM: ALiBi (no rotary) over 6 heads, whose slopes are 4 heads' then every other of 8's;
    # a LayerNorm after the embedding; the fused query_key_value; GELU's tanh form; the head
    # tied to the embedding (save_pretrained writes it once).
    yield ("bloom",
           BloomConfig(vocab_size=61, hidden_size=48, n_layer=2, n_head=6, layer_norm_epsilon=1e-5,
                       initializer_range=0.2),
           dict(family="bloom", rope="alibi", norm="layer", activation="gelu_tanh", bias=1,
                kv_heads=6, ffn=4 * 48, eps=1e-5))


def t5_models():
    """(name, config, what Kiln needs to know) for the T5 encoder-decoders. Relative position
    buckets 8 up to distance 20 (T5's are 32 up to 128) so that the lengths below reach the
    logarithmic buckets and past the last; heads of d_kv 12, not d_model / heads = 8. In
    transformers 5 the head is always the shared embedding; tie_word_embeddings in the config
    only says whether the decoder's output is scaled by d_model^-0.5 first (v1.0's way)."""
    shape = dict(vocab_size=61, d_model=32, d_kv=12, d_ff=40, num_layers=2, num_decoder_layers=2,
                 num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                 dropout_rate=0.0, layer_norm_epsilon=1e-6)
    yield ("t5", T5Config(**shape, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
           dict(activation="geglu", scale_output=0))
    yield ("t5_relu", T5Config(**shape, feed_forward_proj="relu", tie_word_embeddings=True),
           dict(activation="relu", scale_output=1))


def write_t5(root):
    """Writes each T5 model with its inputs (encoder ids with padding, decoder ids of another
    length) and logits."""
    for name, config, extra in t5_models():
        model = T5ForConditionalGeneration(config).double()
        model.eval()
        with torch.no_grad():  # norms start at 1: make them matter
            for key, p in model.named_parameters():
                if key.endswith("layer_norm.weight"):
                    p.add_(torch.randn_like(p) * 0.3)
            for p in model.parameters():
                p.copy_(p.float())
        out = os.path.join(root, name)
        os.makedirs(out, exist_ok=True)
        copy.deepcopy(model).float().save_pretrained(out)
        ids = torch.randint(0, config.vocab_size, (BATCH, LENGTH))
        mask = torch.ones(BATCH, LENGTH, dtype=torch.int64)
        mask[1, LENGTH - 5:] = 0  # the second input is 5 tokens shorter: padding
        decoder_ids = torch.randint(0, config.vocab_size, (BATCH, LENGTH - 7))
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask,
                           decoder_input_ids=decoder_ids).logits
        save_file({"ids": ids, "mask": mask, "decoder_ids": decoder_ids, "logits": logits},
                  os.path.join(out, "reference.safetensors"))
        fields = dict(family="t5", layers=config.num_layers,
                      decoder_layers=config.num_decoder_layers, hidden=config.d_model,
                      heads=config.num_heads, head_dim=config.d_kv, ffn=config.d_ff,
                      vocab=config.vocab_size, eps=config.layer_norm_epsilon,
                      buckets=config.relative_attention_num_buckets,
                      max_distance=config.relative_attention_max_distance, weights="f32")
        fields.update(extra)
        with open(os.path.join(out, "config.txt"), "w") as f:
            for key, value in fields.items():
                f.write(f"{key} {value}\n")


def long_context_models():
    """LLaMAs whose rotary frequencies follow the sequence length (24 tokens, past the 16 they
    were "trained" on): dynamic NTK, and Phi-3's LongRoPE with its per-pair factors. Written after
    the T5s, so the models before them draw the same weights as before these were added."""
    yield ("llama_dynamic",
           LlamaConfig(**SHAPE, rms_norm_eps=1e-5, max_position_embeddings=16,
                       rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0)),
           dict(rope="dynamic", theta=10000.0, factor=2.0, original=16))
    short, long = [1.0, 1.25, 1.5, 2.0], [1.0, 2.0, 4.0, 8.0]
    yield ("llama_longrope",
           LlamaConfig(**SHAPE, rms_norm_eps=1e-5, max_position_embeddings=64,
                       rope_parameters=dict(rope_type="longrope", rope_theta=10000.0,
                                            short_factor=short, long_factor=long,
                                            original_max_position_embeddings=16, factor=4.0)),
           dict(rope="longrope", theta=10000.0, factor=4.0, original=16,
                short=",".join(map(str, short)), long=",".join(map(str, long))))


def write_causal(root, name, config, extra):
    """Writes one causal language model with its token ids and logits."""
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").double()
    model.eval()
    with torch.no_grad():  # norms start at 1 and biases at 0: make them matter
        for key, p in model.named_parameters():
            if key.endswith(("norm.weight", ".bias")):
                p.add_(torch.randn_like(p) * 0.3)
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    # The reference then runs (in f64) on exactly the weights the file holds; its buffers
    # (rotary frequencies) stay f64, as Kiln computes them.
    weights = torch.bfloat16 if extra.get("weights") == "bf16" else torch.float32
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(weights))
    # LLaMA's in shards of at most 20 kB with their index, as large checkpoints come.
    copy.deepcopy(model).to(weights).save_pretrained(
        out, max_shard_size="20KB" if name == "llama3" else "5GB")
    ids = torch.randint(0, config.vocab_size, (BATCH, LENGTH))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    save_file({"ids": ids, "logits": logits}, os.path.join(out, "reference.safetensors"))
    fields = dict(layers=config.num_hidden_layers, hidden=config.hidden_size,
                  heads=config.num_attention_heads,
                  kv_heads=getattr(config, "num_key_value_heads", None),
                  ffn=getattr(config, "intermediate_size", None), vocab=config.vocab_size,
                  eps=getattr(config, "rms_norm_eps", None) or
                  getattr(config, "layer_norm_eps", None),
                  qk_norm=0, window=0, factor=1.0, original=0, low=1.0, high=4.0,
                  activation="swiglu", norm_offset=0, embed_scale=1.0, family="llama",
                  norm="rms", bias=0, qkv_bias=0, parallel=0, rotary_dims=0, post_norms=0,
                  attention_scale=0.0, thetas="-", windows="-", weights="f32",
                  attention_softcap=0.0, final_softcap=0.0, head_bias=0,
                  qk_norm_across_heads=0, input_norms=1, short="-", long="-")
    fields.update(extra)
    with open(os.path.join(out, "config.txt"), "w") as f:
        for key, value in fields.items():
            f.write(f"{key} {value}\n")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    torch.manual_seed(0)
    for name, config, extra in models():
        write_causal(sys.argv[1], name, config, extra)
    write_t5(sys.argv[1])
    for name, config, extra in long_context_models():
        write_causal(sys.argv[1], name, config, extra)
    print(f"[hf-parity] wrote llama3, qwen3, mistral, qwen2, gemma, gemma3, gemma2, olmo2, neox, "
          f"phi, bloom, t5, t5_relu, llama_dynamic and llama_longrope to "
          f"{sys.argv[1]} "
          f"(transformers {transformers.__version__}, torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
