"""The in-process nanotune engine as a benchmark backend: a thin adapter over the engine's protocol

    eng.add_request(prompt_ids, SamplingParams(max_tokens=n, ignore_eos=True), request_id) -> str
    eng.step() -> list[RequestOutput]; eng.has_unfinished(); eng.stats()

so any object with that protocol (the tests' FakeEngine, the real LLMEngine) plugs in. Token times are taken
when `step()` returns: that is when the tokens of that iteration exist for a caller.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from engine.request import SamplingParams
from nanotune.bench.backends.base import Backend
from nanotune.bench.records import BenchRequest, RequestRecord


class EngineBackend(Backend):
    def __init__(self, engine, name: str = "nanoflow", info: dict | None = None, owns_engine: bool = False) -> None:
        super().__init__()
        self.engine = engine
        # close() ends an engine this backend built (its tensor-parallel ranks); a caller's engine outlives it
        self.owns_engine = owns_engine
        self.name = name
        self.info = info or {}
        # the optimum counts parameters per GPU: under tensor parallelism each rank holds 1 / tp of them
        self.num_params = int(engine.model_config.num_params / getattr(getattr(engine, "config", None), "tp", 1))
        self.vocab_size = int(engine.vocab_size)
        self._inflight: dict[str, RequestRecord] = {}
        self._ended: list[RequestRecord] = []
        self._step_s: list[float] = []
        self._step_tokens: list[int] = []
        self._host_s = self._wait_s = 0.0
        self._last = None  # the engine's last StepRecord (engine.observe), for the live view
        if hasattr(engine, "add_observer"):  # the real engine reports each step; a bare protocol engine does not
            engine.add_observer(self._observe)

    def _observe(self, record) -> None:
        self._last = record
        if record.num_tokens:
            self._step_tokens.append(int(record.num_tokens))
        self._host_s += record.host_s
        self._wait_s += record.wait_s

    def begin(self, t0: float) -> None:
        super().begin(t0)
        self._step_s, self._step_tokens = [], []
        self._host_s = self._wait_s = 0.0
        self._preemptions0 = self.stats().get("num_preemptions")

    def _preemptions(self) -> dict:
        now, start = self.stats().get("num_preemptions"), getattr(self, "_preemptions0", None)
        return {} if now is None or start is None else {"num_preemptions": int(now) - int(start)}

    def phase_stats(self) -> dict:
        """Measured iteration (step) times: what a plan's predicted iteration time is checked against."""
        if not self._step_s:
            return {"num_steps": 0, **self._preemptions()}
        ms = sorted(1e3 * s for s in self._step_s)
        out = {"num_steps": len(ms), "mean_step_ms": statistics.fmean(ms), "median_step_ms": ms[len(ms) // 2],
               "total_step_s": sum(self._step_s)}
        if self._step_tokens:
            out["mean_tokens_per_step"] = statistics.fmean(self._step_tokens)
        if self._host_s or self._wait_s:
            # Python time of the engine's steps against time blocked on the GPU; with async scheduling the
            # Python part overlaps the GPU's work, so this is host load, not GPU idle time
            out["host_ms_per_step"] = 1e3 * self._host_s / len(ms)
            out["host_fraction"] = self._host_s / (self._host_s + self._wait_s)
        return {**out, **self._preemptions()}

    def describe(self) -> dict:
        return {"engine": self.name, "model": getattr(self.engine.model_config, "name", None),
                "num_params": self.num_params, "vocab_size": self.vocab_size, **self.info}

    def submit(self, req: BenchRequest, rec: RequestRecord) -> None:
        # The engine steps in the caller's thread: a request that arrived while a step ran is handed over
        # only after it. A server would have received it on arrival, so the send is stamped at its due time
        # and that step counts in its TTFT (the driver's queue time stays the --max-concurrency wait).
        now = self.now()
        rec.send_s = min(now, rec.due_s) if rec.due_s is not None else now
        try:
            params = SamplingParams(max_tokens=req.output_len, ignore_eos=True)
            self.engine.add_request(list(req.prompt_ids), params, request_id=req.request_id)
        except ValueError as e:  # the engine refused this request (too long, ...): it fails, the run goes on
            rec.fail(self.now(), f"{type(e).__name__}: {e}")
            self._ended.append(rec)
            return
        self._inflight[req.request_id] = rec

    def poll(self, timeout: float) -> list[RequestRecord]:
        ended, self._ended = self._ended, []
        if not self.engine.has_unfinished():
            if not ended and timeout > 0:
                time.sleep(timeout)  # nothing to run until the next arrival
            return ended
        start = time.perf_counter()
        outputs = self.engine.step()
        t = self.now()
        self._step_s.append(time.perf_counter() - start)
        for out in outputs:
            rec = self._inflight.get(out.request_id)
            if rec is None:
                continue
            if out.new_token_ids:
                rec.add_tokens(t, len(out.new_token_ids))
            if out.is_finished:
                if out.num_output_tokens:
                    rec.output_len = out.num_output_tokens
                rec.finish(t)
                ended.append(self._inflight.pop(out.request_id))
        return ended

    def stats(self) -> dict:
        try:
            out = dict(self.engine.stats())
        except Exception:  # a live view must never take the benchmark down
            return {}
        r = self._last
        if r is not None:  # the last step as the engine's observer record has it
            out["step"] = {"num_tokens": r.num_tokens, "num_decode": r.num_decode,
                           "host_ms": round(1e3 * r.host_s, 3), "wait_ms": round(1e3 * r.wait_s, 3)}
        return out

    def close(self) -> None:
        if hasattr(self.engine, "remove_observer"):
            try:
                self.engine.remove_observer(self._observe)
            except ValueError:
                pass
        close = getattr(self.engine, "close", None) if self.owns_engine else None
        if close is not None:  # tensor parallelism: end the other ranks
            close()

    def abort(self) -> None:
        self._inflight.clear()


def plan_info(plan: str | None) -> dict:
    """The plan as recorded in result.json: its path and, when readable, its content (a plan file may be
    edited or deleted later; the result must still say what ran)."""
    if not plan:
        return {"plan": None}
    info: dict = {"plan": str(plan)}
    try:
        info["plan_json"] = json.loads(Path(plan).read_text())
    except (OSError, ValueError):
        pass
    return info


def load_engine_backend(kind: str, model: str, device: str, dtype: str | None, plan: str | None,
                        seed: int, **engine_kw) -> EngineBackend:
    """Build the real engine. `sequential` is the engine with its one-nano-batch plan (plan=None);
    `nanoflow` runs `--plan FILE` if given, else the engine's default plan."""
    from engine import EngineConfig, LLMEngine

    if kind == "sequential":  # the baseline stays the one-nano-batch plan whatever the default becomes
        plan = "sequential"
    cfg = EngineConfig(model=model, device=device, dtype=dtype or "auto", plan=plan, seed=seed, **engine_kw)
    eng = LLMEngine(cfg)
    info = {"device": device, "dtype": cfg.dtype, "kv_cache_dtype": cfg.kv_cache_dtype,
            "decode_kernel": cfg.decode_kernel, **plan_info(None if kind == "sequential" else plan),
            **({"tp": cfg.tp, "allreduce": cfg.allreduce} if cfg.tp > 1 else {})}
    if kind == "nanoflow" and not plan:
        info["plan_note"] = "no --plan given: the engine's default plan"
    return EngineBackend(eng, name=kind, info=info, owns_engine=True)
