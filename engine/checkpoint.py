"""Checkpoint guard: a Hugging Face checkpoint is computed exactly as transformers computes it, or refused.

config.json: every field is either in FIELDS (the engine implements it, for the values its check accepts),
or in NO_MATH (it does not change what the model computes at inference). Any other field is refused in one
line naming it and its value: an unknown field may change the computation (experts, a norm type,
quantization, a new attention pattern), and assuming it does not is how a different model runs silently.
Tensors: every tensor in the safetensors files must be one the loader used (check_tensors).

Plain Python (no torch), like engine.config which calls check_config.
"""

from __future__ import annotations

import json

from engine.config import ACTIVATIONS
from engine.errors import EngineConfigError

# model_type -> the one `architectures` entry whose weights and forward the engine implements
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# Fields that do not change the computation (short on purpose: everything else must be understood).
NO_MATH = frozenset({
    "_name_or_path", "transformers_version",  # provenance
    "torch_dtype", "dtype",  # storage dtype; the engine runs in the dtype it is given
    "bos_token_id", "pad_token_id",  # tokenizer ids (eos_token_id is read: it ends requests)
    "use_cache",  # HF's KV-cache switch; the engine always caches
    "initializer_range", "attention_dropout",  # training only: init std, dropout (off at inference)
    "pretraining_tp",  # transformers 4.x cut the same GEMMs into slices and summed them: the same products
})

ROPE_TYPES = {  # rope type -> the keys of its parameters that engine.kernels.rope.rope_inv_freq reads
    "default": set(),
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}
LAYER_TYPES = ("full_attention", "sliding_attention")


def _show(value) -> str:
    return json.dumps(value)


# ---- value checks: (value, raw config) -> None when implemented, else why not -------------------------
def _any(value, raw):  # read into ModelConfig; every value is implemented
    return None


def _bool(value, raw):
    return None if isinstance(value, bool) else "expected true or false"


def _pos_int(value, raw):
    return None if isinstance(value, int) and not isinstance(value, bool) and value > 0 else "expected an integer > 0"


def _nonneg_int(value, raw):
    return None if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else "expected an integer >= 0"


def _opt_pos_int(value, raw):
    return None if value is None else _pos_int(value, raw)


def _number(value, raw):
    return None if isinstance(value, int | float) and not isinstance(value, bool) else "expected a number"


def _activation(value, raw):
    return None if value in ACTIVATIONS else f"activation not implemented (supported: {', '.join(ACTIVATIONS)})"


def _head_dim(value, raw):
    if value is None:
        return None
    # tl.arange and tl.dot in the attention kernels need a power of two of at least 16
    if _pos_int(value, raw) or value < 16 or value & (value - 1):
        return "not implemented (the attention kernels need a power of two >= 16)"
    return None


def _partial_rotary(value, raw):
    return None if value in (None, 1, 1.0) else "partial rotary embedding is not implemented (only 1.0)"


def _rope(value, raw):
    if value is None:
        return None
    if not isinstance(value, dict):
        return "expected an object"
    rope_type = value.get("rope_type", value.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        return f"rope_type '{rope_type}' is not implemented (supported: {', '.join(ROPE_TYPES)})"
    for key, v in value.items():
        if key == "partial_rotary_factor" and not _partial_rotary(v, raw):
            continue
        if key not in ROPE_TYPES[rope_type] | {"rope_type", "type", "rope_theta"}:
            return f"key '{key}' = {_show(v)} is not implemented for rope_type '{rope_type}'"
    return None


def _window(value, raw):
    return None if value is None else _pos_int(value, raw)


def _layer_types(value, raw):
    if value is None:
        return None
    if not isinstance(value, list) or any(t not in LAYER_TYPES for t in value):
        return f"expected a list of {' / '.join(LAYER_TYPES)}"
    if len(value) != raw.get("num_hidden_layers"):
        return "expected one entry per layer (num_hidden_layers)"
    return None


def _architectures(value, raw):
    want = ARCHITECTURES[raw.get("model_type", "llama")]
    if value is None or value == [want]:
        return None
    return f"not implemented for model_type '{raw.get('model_type', 'llama')}' (supported: [\"{want}\"])"


COMMON = {
    "model_type": _any,  # checked first, in check_config
    "architectures": _architectures,
    "vocab_size": _pos_int, "hidden_size": _pos_int, "intermediate_size": _pos_int,
    "num_hidden_layers": _pos_int, "num_attention_heads": _pos_int, "num_key_value_heads": _opt_pos_int,
    "head_dim": _head_dim, "rms_norm_eps": _number, "max_position_embeddings": _pos_int,
    "tie_word_embeddings": _bool, "eos_token_id": _any, "hidden_act": _activation,
    "rope_theta": _number, "rope_scaling": _rope, "rope_parameters": _rope,
    "partial_rotary_factor": _partial_rotary,
}
# Fields of each architecture's transformers config class beyond the common ones.
FIELDS = {
    "llama": {**COMMON, "attention_bias": _bool, "mlp_bias": _bool},
    "mistral": {**COMMON, "sliding_window": _window},
    "qwen2": {**COMMON, "use_sliding_window": _bool, "sliding_window": _window,
              "max_window_layers": _nonneg_int, "layer_types": _layer_types},
}


def check_config(raw: dict, where) -> None:
    """Raise EngineConfigError naming the first field of config.json (parsed: raw) that is not implemented."""
    model_type = raw.get("model_type", "llama")
    if model_type not in FIELDS:
        raise EngineConfigError(f"{where}: field 'model_type': unsupported '{model_type}' "
                                f"(supported: {', '.join(FIELDS)})")
    table = FIELDS[model_type]
    for name, value in raw.items():
        if name in NO_MATH:
            continue
        check = table.get(name)
        why = (f"not a field this engine implements for model_type '{model_type}' (it may change the "
               "computation)") if check is None else check(value, raw)
        if why:
            raise EngineConfigError(f"{where}: field '{name}' = {_show(value)}: {why}")
    hidden, heads = raw.get("hidden_size"), raw.get("num_attention_heads")
    if raw.get("head_dim") is None and isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        if hidden % heads or _head_dim(hidden // heads, raw):
            raise EngineConfigError(f"{where}: field 'hidden_size' = {hidden}: hidden_size / num_attention_heads "
                                    "must be a power of two >= 16 (the head size; or give head_dim)")


# Rotary frequencies that transformers 4.x saved as buffers: the engine computes the same values from
# rope_theta / rope_scaling (already checked above), so ignoring them drops nothing the model needs.
IGNORED_TENSOR_SUFFIXES = (".rotary_emb.inv_freq",)


def check_tensors(where, names: dict[str, str], used: set[str]) -> None:
    """Raise EngineConfigError naming a checkpoint tensor the loader did not use.

    names: the loader's name of every tensor -> its name in the checkpoint; used: the loader names it took."""
    for name in sorted(names):
        if name not in used and not name.endswith(IGNORED_TENSOR_SUFFIXES):
            raise EngineConfigError(f"{where}: tensor '{names[name]}' is not used by the model that config.json "
                                    "describes (refusing to run a different model than the checkpoint's)")
