"""The model sections of the config (``models:``): ONNX, llama.cpp and the delay test backend."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    model_validator,
)

from agentd.config.base import ConfigPath, Name, _Model


class _ModelBase(_Model):
    name: Name
    version: str = Field(default="1", min_length=1, max_length=64)
    circuit_failures: int = Field(default=3, ge=1, le=1000)
    circuit_cooldown_s: float = Field(default=30.0, gt=0)


class OnnxModelConfig(_ModelBase):
    backend: Literal["onnx"]
    path: ConfigPath
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs: list[str] = Field(min_length=1)
    labels: list[str] = Field(min_length=2)
    input_name: str | None = None
    output_name: str | None = None
    threads: int = Field(default=1, ge=1, le=64)
    memory_headroom_mb: float = Field(default=64.0, ge=0)
    # The statistics of the training inputs (`agentd model card`): inputs outside them fall
    # back with reason out_of_distribution (stages/card.py). None: no such gate.
    card: ConfigPath | None = None
    card_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")  # checked at load, like the model's


class DelayModelConfig(_ModelBase):
    """A synthetic stage for tests and benchmarks: waits, then answers a fixed label."""

    backend: Literal["delay"]
    delay_ms: float = Field(ge=0, le=600_000)
    label: str
    confidence: float = Field(default=0.99, ge=0, le=1)
    # The rest of its distribution: other labels and their shares (for tests of gates that read it).
    scores: dict[str, float] = Field(default_factory=dict, max_length=64)
    cancellable: bool = True


class PromptExample(_Model):
    """One few-shot example: event fields and the label the model should answer."""

    input: dict[str, str | float | int | bool]
    label: str


class LlamaPromptConfig(_Model):
    """The fixed prefix (instructions, examples) and how an event becomes the suffix.

    ``event`` is the suffix template; ``{event}`` is replaced by the event's fields as
    escaped JSON (``format: text``: the values alone, each escaped as in a JSON string,
    joined by " | "), strings cut to ``max_field_chars``, so event text is data, never
    instructions. ``choices`` maps a label to the text scored after the suffix (default:
    a space and the label).
    """

    instructions: str = Field(default="", max_length=16384)
    examples: list[PromptExample] = Field(default_factory=list, max_length=64)
    event: str = Field(default="Event: {event}\nAnswer:", min_length=1, max_length=4096)
    fields: list[str] | None = None
    format: Literal["json", "text"] = "json"  # text: the values only, each escaped like a JSON string
    choices: dict[str, str] = Field(default_factory=dict)
    max_field_chars: int = Field(default=200, ge=1, le=4096)
    calibrate: bool = False

    @model_validator(mode="after")
    def _check(self) -> LlamaPromptConfig:
        if self.event.count("{event}") != 1:
            raise ValueError("prompt.event must contain {event} exactly once")
        return self


class RationaleConfig(_Model):
    """A short generated explanation, only within the decision's remaining budget."""

    enabled: bool = False
    max_tokens: int = Field(default=24, ge=1, le=256)
    prompt: str = Field(default="\nReason:", max_length=256)
    reserve_ms: float = Field(default=5.0, ge=0, le=10_000)


class LlamaModelConfig(_ModelBase):
    backend: Literal["llama_cpp"]
    path: ConfigPath
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    labels: list[str] = Field(min_length=2, max_length=64)
    n_ctx: int = Field(default=1024, ge=64, le=131072)
    n_threads: int = Field(default=2, ge=1, le=256)
    n_batch: int = Field(default=256, ge=1, le=8192)
    n_gpu_layers: int = Field(default=0, ge=-1)
    nice: int = Field(default=10, ge=0, le=19)  # inference threads yield the CPU to the event loop (deadlines)
    memory_headroom_mb: float = Field(default=128.0, ge=0)
    prompt: LlamaPromptConfig = LlamaPromptConfig()
    rationale: RationaleConfig = RationaleConfig()

    @model_validator(mode="after")
    def _check(self) -> LlamaModelConfig:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        for label in self.prompt.choices:
            if label not in self.labels:
                raise ValueError(f"prompt.choices: {label!r} is not one of the labels ({', '.join(self.labels)})")
        for i, ex in enumerate(self.prompt.examples):
            if ex.label not in self.labels:
                raise ValueError(f"prompt.examples[{i}].label: {ex.label!r} is not one of the labels")
            lacking = [f for f in self.prompt.fields or () if f not in ex.input]
            if lacking:
                raise ValueError(f"prompt.examples[{i}].input: lacks prompt field(s) {', '.join(lacking)}")
        return self


class TextExample(_Model):
    """One labelled example of a text stage: a text and the label it stands for."""

    text: str = Field(min_length=1, max_length=2000)
    label: str = Field(min_length=1, max_length=64)


class EmbeddingModelConfig(_ModelBase):
    """Text classified by its similarity to labelled examples (a sentence-embedding ONNX model).

    The answer is the label whose nearest examples are most similar; its confidence a
    softmax over the labels' similarities; its out-of-distribution score how far the text
    is from every example (above 1: the nearest example is less similar than
    ``min_similarity``).
    """

    backend: Literal["embedding"]
    path: ConfigPath
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tokenizer: ConfigPath  # the model's tokenizer.json (Hugging Face tokenizers)
    tokenizer_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    fields: list[str] = Field(min_length=1, max_length=8)  # the text fields read, joined by " / "
    examples: list[TextExample] = Field(min_length=2, max_length=10_000)
    max_tokens: int = Field(default=128, ge=8, le=512)
    # linear: a softmax classifier over the embeddings, trained on the examples at load and
    # again as labels add examples; nearest: the label whose k nearest examples are most similar.
    head: Literal["linear", "nearest"] = "linear"
    k: int = Field(default=3, ge=1, le=50)  # nearest: a label's similarity is the mean of its k most similar examples
    temperature: float = Field(default=0.05, gt=0, le=10)  # nearest: softmax temperature over the labels' similarities
    min_similarity: float = Field(default=0.35, ge=-1, lt=1)
    threads: int = Field(default=1, ge=1, le=64)
    memory_headroom_mb: float = Field(default=64.0, ge=0)

    @property
    def labels(self) -> list[str]:
        """The examples' labels, in order of first appearance."""
        return list(dict.fromkeys(e.label for e in self.examples))

    @model_validator(mode="after")
    def _check(self) -> EmbeddingModelConfig:
        if len(self.labels) < 2:
            raise ValueError("examples must cover at least two labels")
        return self


ModelConfig = Annotated[
    OnnxModelConfig | DelayModelConfig | LlamaModelConfig | EmbeddingModelConfig, Field(discriminator="backend")
]
