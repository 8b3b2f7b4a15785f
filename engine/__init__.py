"""nanotune's inference engine: a global dense batch, a paged KV cache, and plan-driven execution.

`engine` never imports `nanotune`. Importing it does not import torch; building an LLMEngine does.
"""

from engine.config import EngineConfig, ModelConfig
from engine.engine import LLMEngine
from engine.plan import PipelinePlan
from engine.presets import get_preset
from engine.request import RequestOutput, SamplingParams

__all__ = ["EngineConfig", "LLMEngine", "ModelConfig", "PipelinePlan", "RequestOutput", "SamplingParams",
           "get_preset"]
