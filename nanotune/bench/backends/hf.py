"""The Hugging Face transformers peer: continuous batching in process (`init_continuous_batching`, the
manager behind `model.generate_batch`), on a Llama model built from a preset's shapes with random weights,
so it runs the same model shapes as the engine on any machine.

Per-token times: requests are added with `record_timestamps=True`, so each finished `GenerationOutput`
carries one `time.perf_counter()` stamp per generated token (taken in the manager's generation thread when
the token is appended), on the same clock as the driver. TTFT, TPOT and ITL are therefore per token, as
for the engine. When an installed transformers lacks `record_timestamps`, only the end time is known and
TTFT/ITL come out null.

EOS is disabled (eos_token_id=-1) so every request generates exactly its trace's output length.
"""

from __future__ import annotations

import inspect
import math
import queue

from nanotune.bench.backends.base import Backend
from nanotune.bench.records import BenchRequest, RequestRecord
from nanotune.errors import UserError


def hf_llama_config(num_layers: int, hidden_size: int, intermediate_size: int, num_heads: int,
                    num_kv_heads: int, head_dim: int, vocab_size: int, rope_theta: float = 10000.0,
                    rope_scaling: dict | None = None, max_position: int = 4096, rms_norm_eps: float = 1e-5,
                    qkv_bias: bool = False, tie_word_embeddings: bool = False, hidden_act: str = "silu",
                    mlp_bias: bool = False):
    """A `transformers.LlamaConfig` of these shapes. Qwen2's q/k/v bias is approximated by Llama's
    `attention_bias` (which also biases o_proj: hidden_size extra parameters, nothing for throughput)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        num_hidden_layers=num_layers, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, head_dim=head_dim,
        vocab_size=vocab_size, rope_theta=rope_theta,
        rope_scaling=dict(rope_scaling) if rope_scaling else None,
        max_position_embeddings=max_position, rms_norm_eps=rms_norm_eps, attention_bias=qkv_bias,
        hidden_act=hidden_act, mlp_bias=mlp_bias,
        tie_word_embeddings=tie_word_embeddings, eos_token_id=None, bos_token_id=None, pad_token_id=None,
    )


def hf_config_from_preset(preset):
    """From an engine `ModelConfig` (engine.presets.get_preset(name)). A preset with a sliding window is
    refused: Llama's class attends to the whole context, so the peer would compute another model."""
    if preset.sliding_window:
        raise UserError(f"--engine hf: preset '{preset.name}' has a {preset.sliding_window}-token sliding window, "
                         "which the Llama peer cannot apply; use the nanoflow engine for it")
    return hf_llama_config(preset.num_layers, preset.hidden_size, preset.intermediate_size, preset.num_heads,
                           preset.num_kv_heads, preset.head_dim, preset.vocab_size, preset.rope_theta,
                           preset.rope_scaling, preset.max_position, preset.rms_norm_eps,
                           preset.qkv_bias or preset.o_bias, preset.tie_word_embeddings, preset.hidden_act,
                           preset.mlp_bias)


def build_random_model(config, device: str, dtype: str | None, attn: str, seed: int):
    """Random weights created directly on the device (fast; no checkpoint needed)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype) if dtype and dtype != "auto" else (
        torch.bfloat16 if device.startswith("cuda") else torch.float32)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, attn_implementation=attn)
    return model.eval()


class HFBackend(Backend):
    name = "hf"

    def __init__(self, model, name: str, attn: str, cpu_num_blocks: int | None = None,
                 lengths: list[tuple[int, int]] | None = None) -> None:
        """Set up the manager as `generate_batch` does (workload hints from the trace's lengths, then its
        CUDA-graph warm-up) but keep it running, so requests can arrive over time."""
        super().__init__()
        import transformers
        from transformers import GenerationConfig

        self.model = model
        self.model_name = name
        self.attn = attn
        self.num_params = sum(p.numel() for p in model.parameters())
        self.vocab_size = int(model.config.vocab_size)
        gen = GenerationConfig(do_sample=False, eos_token_id=-1, max_new_tokens=max(
            (o for _, o in lengths or []), default=1))
        cb_kw = {"num_blocks": cpu_num_blocks} if cpu_num_blocks else {}
        init_kw: dict = {"generation_config": gen}
        if hasattr(transformers, "ContinuousBatchingConfig"):
            init_kw["continuous_batching_config"] = transformers.ContinuousBatchingConfig(**cb_kw)
        else:  # older 5.x: the batching knobs lived on GenerationConfig
            for k, v in cb_kw.items():
                setattr(gen, k, v)
        init_params = inspect.signature(model.init_continuous_batching).parameters
        if lengths and "workload_hints" in init_params:
            from transformers.generation.continuous_batching.utils import WorkloadHints

            init_kw["workload_hints"] = WorkloadHints(max_prompt_length=max(p for p, _ in lengths),
                                                      max_generated_length=max(o for _, o in lengths),
                                                      num_requests=len(lengths))
        self.manager = model.init_continuous_batching(**init_kw)
        self.has_timestamps = "record_timestamps" in inspect.signature(self.manager.add_request).parameters
        if hasattr(self.manager, "warmup"):
            self.manager.warmup()
        self.manager.start()
        self._inflight: dict[str, RequestRecord] = {}
        self._refused: list[RequestRecord] = []

    def describe(self) -> dict:
        import transformers

        return {"engine": "hf", "model": self.model_name, "num_params": self.num_params,
                "vocab_size": self.vocab_size, "device": str(self.model.device),
                "dtype": str(self.model.dtype).removeprefix("torch."),
                "attn_implementation": self.model.config._attn_implementation, "requested_attn": self.attn,
                "transformers": transformers.__version__, "per_token_times": self.has_timestamps}

    def submit(self, req: BenchRequest, rec: RequestRecord) -> None:
        kw = {"record_timestamps": True} if self.has_timestamps else {}
        rec.send_s = self.now()
        self._inflight[req.request_id] = rec
        rid = self.manager.add_request(list(req.prompt_ids), request_id=req.request_id,
                                       max_new_tokens=req.output_len, eos_token_id=-1, **kw)
        if rid is None:  # the manager refused it (stopping, or this process is not the TP driver)
            self._inflight.pop(req.request_id)
            rec.fail(self.now(), "transformers refused the request (manager not accepting requests)")
            self._refused.append(rec)

    def _record(self, out) -> RequestRecord | None:
        rec = self._inflight.pop(out.request_id, None)
        if rec is None:
            return None
        if out.error is not None:
            rec.fail(self.now(), str(out.error))
            return rec
        stamps = out.timestamps or []
        for ts in stamps:
            rec.add_tokens(ts - self.t0)
        rec.output_len = len(out.generated_tokens)
        end = stamps[-1] if stamps else (out.lifespan[1] if out.lifespan[1] > 0 else None)
        rec.finish(end - self.t0 if end is not None else self.now())
        return rec

    def poll(self, timeout: float) -> list[RequestRecord]:
        ended, self._refused = self._refused, []
        try:
            out = self.manager.get_result(timeout=max(timeout, 1e-3))
            while out is not None:
                if out.is_finished() and (rec := self._record(out)) is not None:
                    ended.append(rec)
                out = self.manager.get_result(timeout=0)  # drain what is ready, without waiting
        except queue.Empty:
            pass
        if self._inflight and not self.manager.is_running():
            err = getattr(self.manager.background_thread_status, "fatal_error", None)
            for rec in self._inflight.values():
                rec.fail(self.now(), f"transformers generation thread stopped: {err}")
                ended.append(rec)
            self._inflight.clear()
        return ended

    def stats(self) -> dict:
        """In-flight count, plus HF's own running/waiting and cache use where this version exposes them
        (internals, read best-effort from the generation thread's objects: a live view, not a metric)."""
        out: dict = {"num_running": len(self._inflight)}
        try:
            bp = self.manager.batch_processor
            out["num_running"] = len(bp.scheduler.active_requests)
            out["num_waiting"] = len(bp.scheduler.waiting_requests)
            out["kv_usage"] = 1.0 - float(bp.cache.compute_free_capacity(relative=True))
        except Exception:  # another transformers version: keep what we have
            pass
        return out

    def abort(self) -> None:
        try:
            self.manager.stop(block=True, timeout=10, hard_stop=True)
        except TypeError:  # no hard_stop in this version
            self.manager.stop(block=True, timeout=10)

    def close(self) -> None:
        if self.manager.is_running():
            self.manager.stop(block=True, timeout=30)
        destroy = getattr(self.manager, "destroy", None)
        if destroy:
            destroy()


def cpu_num_blocks(lengths: list[tuple[int, int]], page_size: int = 256) -> int:
    """On CPU, size HF's paged cache for the workload's (prompt_len, output_len) pairs (its default sizes
    it from free memory, which on a CPU machine means gigabytes allocated for nothing and seconds of
    start-up)."""
    need = sum(math.ceil((p + o) / page_size) for p, o in lengths)
    return max(16, min(need + 8, 4096))


def load_hf_backend(model: str, device: str, dtype: str | None, attn: str, seed: int,
                    lengths: list[tuple[int, int]]) -> HFBackend:
    from engine.presets import get_preset

    preset = get_preset(model)
    hf_model = build_random_model(hf_config_from_preset(preset), device, dtype, attn, seed)
    blocks = cpu_num_blocks(lengths) if device == "cpu" else None
    return HFBackend(hf_model, preset.name, attn, cpu_num_blocks=blocks, lengths=lengths)
