"""A tiny local Hugging Face checkpoint with a tokenizer and a chat template, made offline in a second:
what CPU tests and smoke scripts serve text and chat prompts with (random weights; a word-level tokenizer
whose every id decodes to one word, so any generated sequence is text)."""

from __future__ import annotations

from pathlib import Path

NUM_WORDS = 250
SPECIALS = ["<unk>", "<s>", "</s>"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}assistant : {% endif %}")


def save_tiny_chat_checkpoint(path: str | Path, seed: int = 0, max_position_embeddings: int = 1024) -> Path:
    """Write config.json + model.safetensors + tokenizer files for a 2-layer Llama to `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    vocab = {w: i for i, w in enumerate(SPECIALS + [":"] + [f"w{i}" for i in range(NUM_WORDS)])}
    for role in ("user", "assistant", "system"):
        vocab.setdefault(role, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # HF's 0.02-std init gives near-uniform logits; spread them so outputs vary
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 1.0 / p.shape[-1] ** 0.5)
    model.save_pretrained(path)
    return path


def wait_until(cond, timeout: float = 10.0, poll_s: float = 0.02) -> bool:
    """Poll `cond()` until it is true (-> True) or `timeout` seconds pass (-> False): for tests that watch
    a server's engine from outside (its stats snapshot, its processes)."""
    import time

    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(poll_s)
    return False
