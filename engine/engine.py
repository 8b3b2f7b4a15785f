"""LLMEngine: add_request / step / generate. One step = schedule() -> launch() -> advance(), then resolve()."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from engine.block_manager import BlockManager
from engine.config import EngineConfig, ModelConfig, model_config_from_hf
from engine.errors import EngineConfigError
from engine.observe import Observer, Observers, StepRecord
from engine.presets import get_preset
from engine.request import Request, RequestOutput, SamplingParams
from engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from engine.sizing import DECODE_ROW_ALIGN, resolve_max_model_len


def load_model_config(model: str) -> ModelConfig:
    return model_config_from_hf(model) if Path(model).is_dir() else get_preset(model)


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None, **overrides):
        from engine.runner import ModelRunner  # torch is imported only when an engine is built

        config = (config or EngineConfig()).replace(**overrides) if overrides else (config or EngineConfig())
        from engine.tuned import kv_cache_dtype_with, tuned_file

        # a tuned config (search's tuned.json as the plan) brings the KV dtype it was tuned for
        kv = kv_cache_dtype_with(tuned_file(config.plan), config.kv_cache_dtype, where=config.plan or "")
        if kv != config.kv_cache_dtype:
            config = config.replace(kv_cache_dtype=kv)
        self.config = config
        self.model_config = load_model_config(config.model)
        mc = self.model_config
        # A sliding window needs no rule here: windowed layers read only their last W keys, and the cache
        # keeps every block of a sequence (as for full attention), so any length up to max_position is exact.
        self.max_model_len = resolve_max_model_len(mc, config.max_model_len)
        self._driver = None  # tensor parallelism, rank 0: sends its engine calls to the other ranks
        rank, workers = 0, None
        if config.tp > 1:
            from engine.parallel.launch import start

            rank, workers = start(config, mc)  # refuses a TP that cannot run, before anything loads
        try:
            self.runner = ModelRunner(config, mc, self.max_model_len)
        except Exception as e:
            if workers is None:
                raise
            # rank 0's own bad configuration speaks for itself; else a rank that failed to build names itself
            line = None if isinstance(e, EngineConfigError) else workers.failure(wait_s=2.0)
            workers.close(timeout_s=0 if line or isinstance(e, EngineConfigError) else 5)
            from engine.parallel.launch import TPWorkerError, end_of_spawn_env

            end_of_spawn_env()
            if line is None:
                raise
            raise TPWorkerError(line) from e
        info = self.runner.cache_info
        self.block_manager = BlockManager(info.num_blocks, info.block_size)
        self.scheduler = Scheduler(SchedulerConfig(
            max_num_batched_tokens=config.max_num_batched_tokens, max_num_seqs=config.max_num_seqs,
            max_model_len=self.max_model_len, enable_chunked_prefill=config.enable_chunked_prefill,
            kv_overcommit=config.kv_overcommit, eos_token_ids=mc.eos_token_ids,
            decode_row_align=DECODE_ROW_ALIGN if self.runner.mixed_graphs is not None else 1), self.block_manager)
        self.requests: dict[str, Request] = {}
        self.last_logits = None
        self.num_steps = 0
        self.observers = Observers()
        self._pending = None  # the launched iteration whose tokens are not yet on the host
        if config.tp > 1:
            self._join_tp(rank, workers)

    def _join_tp(self, rank, workers) -> None:
        """Rank 0 drives (and returns); ranks > 0 replay rank 0's calls, then leave (SystemExit(0))."""
        import atexit

        from engine.parallel.driver import Driver, follow

        if rank == 0:
            self._driver = Driver(self.runner.tp, workers)
            atexit.register(self.close)
            return
        try:
            follow(self, self.runner.tp)
        finally:
            self.close()
        raise SystemExit(0)

    def close(self) -> None:
        """End the tensor-parallel ranks this engine started and leave the process group (no-op at TP 1)."""
        if self.config.tp <= 1 or getattr(self, "_closed", False):
            return
        self._closed = True
        import torch.distributed as dist

        from engine.parallel.launch import end_of_spawn_env

        if self._driver is not None:
            self._driver.close()
        if dist.is_initialized():
            dist.destroy_process_group()
        end_of_spawn_env()

    def set_plan(self, plan) -> None:
        """Run later iterations with another PipelinePlan (or a plan JSON path)."""
        from engine.plan import PipelinePlan

        plan = plan if isinstance(plan, PipelinePlan) else PipelinePlan.load(plan)
        if self._driver is not None:
            self._driver.send("plan", plan)
        self.runner.set_plan(plan)

    def set_async_scheduling(self, on: bool) -> None:
        """Schedule one iteration ahead of the GPU (on) or resolve each iteration's tokens before the next
        (off); a pending iteration is resolved by the next step either way."""
        self.config = self.config.replace(async_scheduling=bool(on))

    def add_observer(self, fn: Observer, gpu_time: bool = False) -> None:
        """Call fn(StepRecord) after every step (engine/observe.py). gpu_time=True: time each launched
        iteration on the GPU (two CUDA events per step while such an observer is registered)."""
        self.observers.add(fn, gpu_time)
        self.runner.time_steps = self.observers.wants_gpu_time

    def remove_observer(self, fn: Observer) -> None:
        self.observers.remove(fn)
        self.runner.time_steps = self.observers.wants_gpu_time

    @property
    def vocab_size(self) -> int:
        return self.model_config.vocab_size

    # ---- the API ------------------------------------------------------------------------------------
    def add_request(self, prompt_ids: list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        """Queue a request. Raises ValueError (one line) if it can never fit this engine."""
        params = params or SamplingParams()
        bad = [t for t in prompt_ids if not 0 <= int(t) < self.vocab_size]
        if bad:
            raise ValueError(f"prompt token {bad[0]} outside the vocabulary [0, {self.vocab_size})")
        req = Request(list(map(int, prompt_ids)), params)
        if request_id is not None:
            if request_id in self.requests:
                raise ValueError(f"request id '{request_id}' is already in use")
            req.request_id = request_id
        self.scheduler.add(req)
        self.requests[req.request_id] = req
        if self._driver is not None:
            self._driver.add(req.prompt_ids, params, req.request_id)
        return req.request_id

    def abort(self, request_id: str) -> bool:
        """Stop a request (its client went away): frees its KV blocks at once. True if it was still running
        or waiting; False if it had finished or was never known."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return False
        self.runner.sampler.forget(request_id)
        if self._driver is not None:  # every rank drops it before the next step, so their batches stay equal
            self._driver.abort(request_id)
        return self.scheduler.abort(req)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or self._pending is not None

    def step(self, timings: list | None = None) -> list[RequestOutput]:
        if self._driver is None:
            return self._step(timings)
        self._driver.send("step", timings is not None)  # the other ranks run the same step
        try:
            return self._step(timings)
        except Exception as e:  # a collective failed: name the rank that died, if one did
            raise self._driver.failure(e) from None

    def _step(self, timings: list | None = None) -> list[RequestOutput]:
        """Run one iteration of the dense batch; returns the tokens that reached the host.

        With async scheduling (the default) the next iteration is scheduled and launched before this
        one's sampled tokens are read back, so the GPU never waits on Python between iterations; decode
        inputs not yet on the host are gathered on the device. Outputs then trail the launch by one
        step. A timed iteration (per-op CUDA events) runs synchronously.
        """
        t0 = time.perf_counter()
        every = self.config.time_ops_every
        if timings is None and every and self.num_steps % every == every - 1:
            timings = []  # a sampled iteration: per-op CUDA-event timings, for observers
        is_async = self.config.async_scheduling and timings is None
        outputs, wait, resolve = [], 0.0, 0.0
        self.last_logits = {} if self.config.keep_logits else None
        if self._pending is not None and not is_async:
            outs, w, r = self._resolve(self._pending)
            outputs, wait, resolve = outputs + outs, wait + w, resolve + r
            self._pending = None
        t_sched = time.perf_counter()
        batch: ScheduledBatch = self.scheduler.schedule()
        schedule = time.perf_counter() - t_sched
        handle, launch, index = None, 0.0, -1
        if batch.seqs:
            t = time.perf_counter()
            handle = self.runner.launch(batch, self._pending, timings)
            launch = time.perf_counter() - t
            self.scheduler.advance(batch)
            schedule += time.perf_counter() - t - launch
            index = self.num_steps
            self.num_steps += 1
        elif self._pending is None and self.scheduler.waiting and not self.scheduler.running:
            raise RuntimeError("scheduler made no progress with an empty cache (a bug: check_fits passed)")
        if self._pending is not None:  # the previous iteration's tokens, while this one runs
            outs, w, r = self._resolve(self._pending)
            outputs, wait, resolve = outputs + outs, wait + w, resolve + r
        self._pending = handle
        if handle is not None and not is_async:
            outs, w, r = self._resolve(handle)
            outputs, wait, resolve = outputs + outs, wait + w, resolve + r
            self._pending = None
        if self.observers.active:  # every step reports (one that launched nothing: zero composition)
            self.observers.emit(StepRecord(
                index, batch.num_tokens, batch.num_decode, batch.num_prefill_tokens, len(batch.seqs),
                schedule, launch, resolve, wait, time.perf_counter() - t0 - wait, is_async,
                replayed=bool(handle is not None and handle.replayed),
                gpu=handle.gpu if handle is not None else None, op_timings=timings if handle is not None else None,
                batch=batch, num_outputs=len(outputs)))
        return outputs

    def _resolve(self, handle) -> tuple[list[RequestOutput], float, float]:
        """Read a launched iteration's tokens (waiting for that iteration only) and hand them to the
        scheduler. -> (outputs, seconds waited on the GPU, seconds of Python after the wait)."""
        t = time.perf_counter()
        sampled = handle.sampled()
        wait = time.perf_counter() - t
        outputs = self.scheduler.resolve(handle.batch, sampled)
        if handle.logits is not None:
            rows = iter(handle.logits)
            self.last_logits.update({s.request.request_id: next(rows) for s in handle.batch.seqs if s.samples})
        for o in outputs:
            if o.is_finished:
                self.runner.sampler.forget(o.request_id)
                self.requests.pop(o.request_id, None)
        return outputs, wait, time.perf_counter() - t - wait

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None
                 ) -> list[list[int]]:
        """Run prompts to completion; returns each prompt's output token ids, in order."""
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, plist, strict=True)]
        outs: dict[str, list[int]] = {i: [] for i in ids}
        while self.has_unfinished():
            for o in self.step():
                outs[o.request_id].extend(o.new_token_ids)
        return [outs[i] for i in ids]

    def generate_trace(self, requests, seed: int = 0) -> list[list[int]]:
        """Run trace requests (prompt_len, output_len, optional prompt_ids) offline in benchmark mode."""
        rng = np.random.default_rng(seed)
        prompts, params = [], []
        for r in requests:
            ids = list(r.prompt_ids) if r.prompt_ids else rng.integers(0, self.vocab_size, r.prompt_len).tolist()
            prompts.append(ids)
            params.append(SamplingParams(max_tokens=r.output_len, ignore_eos=True))
        return self.generate(prompts, params)

    def stats(self) -> dict:
        s = self.scheduler
        return {"num_running": len(s.running), "num_waiting": len(s.waiting),
                "kv_usage": self.block_manager.usage, "num_preemptions": s.num_preemptions,
                "num_kv_blocks": self.block_manager.num_blocks}
