"""The checkpoint guard on published config.json files (their fields as released, no weights needed) and on
single bad fields: real checkpoints pass and read as their presets; anything else is one line naming it."""

import json

import pytest

from engine.checkpoint import FIELDS, NO_MATH
from engine.config import model_config_from_hf
from engine.errors import EngineConfigError
from engine.presets import get_preset

LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256,
}
MISTRAL_7B_V01 = {
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
    "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0", "use_cache": True, "vocab_size": 32000,
}
QWEN2_7B = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
    "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen2",
    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2", "use_cache": True, "use_sliding_window": False, "vocab_size": 152064,
}


def read(tmp_path, cfg):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return model_config_from_hf(tmp_path)


@pytest.mark.parametrize("cfg,preset", [(LLAMA31_8B, "llama-3.1-8b"), (MISTRAL_7B_V01, "mistral-7b-v0.1"),
                                        (QWEN2_7B, "qwen2-7b")])
def test_published_configs_pass_and_read_as_their_presets(tmp_path, cfg, preset):
    got, want = read(tmp_path, cfg).to_dict(), get_preset(preset).to_dict()
    got.pop("name"), want.pop("name")
    assert got == want


def test_qwen2_4x_config_windows_layers_from_max_window_layers(tmp_path):
    # transformers 4.x configs have no layer_types: layers i >= max_window_layers use the window
    c = read(tmp_path, {**QWEN2_7B, "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 21})
    assert [c.layer_window(i) for i in (0, 20, 21, 27)] == [0, 0, 4096, 4096]


def test_nulls_mean_defaults(tmp_path):
    c = read(tmp_path, {**MISTRAL_7B_V01, "sliding_window": None, "head_dim": None, "rope_scaling": None,
                        "num_key_value_heads": None})
    assert c.sliding_window is None and c.head_dim == 128 and c.num_kv_heads == 32


@pytest.mark.parametrize("field,value,message", [
    ("hidden_act", "relu2", "field 'hidden_act' = \"relu2\": activation not implemented"),
    ("num_local_experts", 8, "field 'num_local_experts' = 8: not a field this engine implements"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, "rope_type 'yarn' is not implemented"),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192, "attention_factor": 2.0}, "key 'attention_factor'"),
    ("partial_rotary_factor", 0.5, "field 'partial_rotary_factor' = 0.5"),
    ("architectures", ["MixtralForCausalLM"], "field 'architectures' = [\"MixtralForCausalLM\"]"),
    ("head_dim", 96, "field 'head_dim' = 96"),
    ("attention_bias", "yes", "field 'attention_bias' = \"yes\": expected true or false"),
    ("quantization_config", {"quant_method": "awq"}, "field 'quantization_config'"),
    ("layer_types", ["full_attention"] * 32, "field 'layer_types'"),  # not a Llama field
])
def test_bad_fields_are_one_line_naming_them(tmp_path, field, value, message):
    with pytest.raises(EngineConfigError) as err:
        read(tmp_path, {**LLAMA31_8B, field: value})
    msg = str(err.value)
    assert message in msg and "\n" not in msg and str(tmp_path / "config.json") in msg


def test_no_math_list_is_short_and_disjoint_from_implemented_fields():
    assert len(NO_MATH) <= 12
    assert not NO_MATH & set().union(*FIELDS.values())
