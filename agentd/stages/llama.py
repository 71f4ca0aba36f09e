"""The llama.cpp stage: a decision is a choice among the skill's labels, scored by likelihood.

The fixed prompt prefix (instructions and few-shot examples) is evaluated once at load
and its KV cache kept; a decision evaluates only the event's suffix, then scores each
label's continuation by log-likelihood. The softmax over the labels is the confidence,
optionally calibrated against a content-free input (Zhao et al. 2021, "Calibrate Before
Use"). One worker thread owns the ``Llama`` object, which is not thread-safe.

A running evaluation stops when its decision's budget runs out: llama.cpp checks an
abort callback between graph nodes. The callback is libc's ``strlen`` over a two-byte
buffer whose first byte is the flag, so llama.cpp's compute thread polls it without taking Python's GIL (a
Python callback would wait for the GIL on every node while the event loop is busy).
After an abort the context is rewound to the cached prefix and stays usable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.errors import ModelError
from agentd.stages.base import CancelFlag, Cancelled, StageAnswer, ThreadedStage
from agentd.stages.loading import check_memory, verify_file

if TYPE_CHECKING:
    from agentd.config.models import LlamaModelConfig, LlamaPromptConfig

log = logging.getLogger(__name__)


def render_event(prompt: LlamaPromptConfig, fields: Mapping[str, Any], max_chars: int | None = None) -> str:
    """The event as prompt text: its fields as escaped JSON (or escaped values) inside the suffix template.

    JSON escaping keeps quotes, newlines and control characters of event text from
    reading as prompt structure (non-ASCII text stays as it is: the model reads it, and
    ``\\uXXXX`` escapes would cost up to 12 tokens a character); strings are cut to
    ``max_chars`` (default ``max_field_chars``).
    """
    limit = prompt.max_field_chars if max_chars is None else max_chars
    names = prompt.fields if prompt.fields is not None else sorted(fields)
    data: dict[str, Any] = {}
    for name in names:
        if name not in fields:
            raise ModelError(f"prompt field {name!r} is not in the event")
        value = fields[name]
        if isinstance(value, str) and len(value) > limit:
            value = value[:limit]
        data[name] = value
    if prompt.format == "text":  # escaped like a JSON string, without its quotes; | escaped as it separates fields
        text = " | ".join(
            json.dumps(v if isinstance(v, str) else json.dumps(v), ensure_ascii=False)[1:-1].replace("|", "\\|")
            for v in data.values()
        )
    else:
        text = json.dumps(data, ensure_ascii=False, separators=(", ", ": "))
    return prompt.event.replace("{event}", text)


def render_prefix(prompt: LlamaPromptConfig, choices: Mapping[str, str]) -> str:
    """Instructions and few-shot examples: the part of every prompt evaluated once."""
    parts = [prompt.instructions.rstrip() + "\n\n"] if prompt.instructions.strip() else []
    for ex in prompt.examples:
        parts.append(render_event(prompt, ex.input) + choices[ex.label] + "\n\n")
    return "".join(parts)


CONTENT_FREE = ("N/A", "", "[MASK]")  # the content-free inputs of Zhao et al. 2021, averaged


def content_free(prompt: LlamaPromptConfig, example: Mapping[str, Any], token: str = "N/A") -> dict[str, Any]:
    """A content-free input for calibration: every field ``token``."""
    names = prompt.fields if prompt.fields is not None else sorted(example)
    return dict.fromkeys(names, token)


def log_softmax(x: Any) -> Any:
    import numpy as np

    m = float(np.max(x))
    return x - (m + math.log(float(np.sum(np.exp(x - m)))))


def choice_distribution(logliks: Sequence[float], calibration: Sequence[float] | None = None) -> list[float]:
    """Softmax over the labels' log-likelihoods; with ``calibration`` (the content-free input's
    log-probabilities) each probability is divided by the content-free one first, in log space."""
    if calibration is not None:
        logliks = [v - c for v, c in zip(logliks, calibration, strict=True)]
    m = max(logliks)
    p = [math.exp(v - m) for v in logliks]
    total = sum(p)
    return [v / total for v in p]


_LOG_ROUTE: dict[str, Any] = {}  # keeps the ctypes callback referenced: llama.cpp holds its C pointer


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has AMX (x86 from Sapphire Rapids on), by its flags in /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_int8" in line.split() for line in text.splitlines())


_DEFAULTS_LOCK = threading.Lock()


def load_llama(llama_cpp: Any, *, extra_buffers: bool | None = None, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(**kwargs)``; with ``extra_buffers`` False (by default: on a CPU with AMX), llama.cpp
    repacks no weights.

    On a CPU with AMX, llama.cpp repacks Q4_K weights into its AMX buffers, and its AMX kernels
    crash the process on the first evaluation (measured with Gemma 3 270M Q4_K_M and
    llama-cpp-python 0.3.36; ggml-org/llama.cpp#20824, still open). Turning off the extra buffer
    types (``use_extra_bufts``) avoids them. llama-cpp-python has no argument for it, so the
    model parameters it starts from are changed for this one construction.
    """
    if extra_buffers is None:
        extra_buffers = not cpu_has_amx()
    if extra_buffers:
        return llama_cpp.Llama(**kwargs)
    import importlib

    bindings: Any = importlib.import_module("llama_cpp.llama_cpp")  # the ctypes module that llama_cpp.Llama reads them from
    with _DEFAULTS_LOCK:
        defaults = bindings.llama_model_default_params

        def without_extra_buffers() -> Any:
            params = defaults()
            params.use_extra_bufts = False
            return params

        bindings.llama_model_default_params = without_extra_buffers
        try:
            return llama_cpp.Llama(**kwargs)
        finally:
            bindings.llama_model_default_params = defaults


def _route_llama_logs(llama_cpp: Any) -> None:
    """Send llama.cpp's own log lines to agentd's logger (JSON on stderr) instead of raw stderr.

    Warnings and errors become warnings, except two that agentd causes on purpose: the
    line llama.cpp writes after every deadline abort (counted as timeouts) and the notice
    that the sliding-window cache is full size (``swa_full``); the rest goes to debug.
    """
    if _LOG_ROUTE:
        return
    log = logging.getLogger("agentd.llama_cpp")

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def callback(level: int, text: bytes, _data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", errors="replace").strip()
        if line:  # ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continuation
            expected = "removing memory module entries" in line or "full-size SWA cache" in line
            log.log(logging.WARNING if level in (3, 4) and not expected else logging.DEBUG, "llama.cpp: %s", line)

    _LOG_ROUTE["callback"] = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


class _Abort:
    """A flag llama.cpp polls from its compute thread without Python: ``strlen(buf) != 0``.

    ``buf`` is two bytes and only ``buf[0]`` ever changes, so strlen returns 0 or 1: a valid
    C ``bool`` in RAX/X0 on x86_64 and aarch64 however the caller tests it.
    """

    def __init__(self) -> None:
        import llama_cpp

        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        self.buf = ctypes.create_string_buffer(2)
        # strlen returns a size_t; the callback's bool is read from its lowest byte (0 or 1 here).
        address = ctypes.cast(libc.strlen, ctypes.c_void_p).value
        if address is None:
            raise ModelError("cannot find libc's strlen for llama.cpp's abort callback")
        self.callback = llama_cpp.ggml_abort_callback(address)
        self.data = ctypes.cast(self.buf, ctypes.c_void_p)

    def set(self) -> None:
        self.buf[0] = b"x"  # buf[1] stays NUL: strlen is exactly 1

    def clear(self) -> None:
        self.buf[0] = b"\0"

    @property
    def is_set(self) -> bool:
        return self.buf[0] != b"\0"


class LlamaStage(ThreadedStage):
    """Scores the labels' continuations after a cached prefix; see the module docstring."""

    max_batch = 1

    def __init__(self, cfg: LlamaModelConfig) -> None:
        # llama.cpp's CPU backend runs on OpenMP: by default its threads spin for a while after
        # each evaluation, taking the core the event loop needs to keep deadlines. Sleep instead.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import llama_cpp
            import numpy as np
        except ImportError as exc:
            raise ModelError(
                f"model {cfg.name!r}: llama-cpp-python is not installed; install the extra: pip install 'agentd[llm]'"
            ) from exc
        path = Path(cfg.path)
        verify_file(path, cfg.sha256, what=f"model {cfg.name!r}")
        size = path.stat().st_size
        # weights + KV cache (n_ctx x a conservative 40 KiB per token for small models) + compute buffers
        check_memory(cfg.name, size, working_bytes=cfg.n_ctx * 40 * 1024 + 64 * 2**20, headroom_mb=cfg.memory_headroom_mb)
        _route_llama_logs(llama_cpp)
        self._np = np
        self._lc = llama_cpp
        amx = cpu_has_amx()
        if amx:
            log.info("model %s: the CPU has AMX; llama.cpp's weight repacking is off (its AMX kernels crash, llama.cpp#20824)", cfg.name)
        try:
            self._llm = load_llama(
                llama_cpp, extra_buffers=not amx,
                model_path=str(path), n_ctx=cfg.n_ctx, n_threads=cfg.n_threads, n_threads_batch=cfg.n_threads,
                n_batch=cfg.n_batch, n_gpu_layers=cfg.n_gpu_layers, logits_all=False, verbose=False, seed=0,
                swa_full=True,  # rewinding to the cached prefix (seq_rm) needs a full-size sliding-window cache
            )
        except Exception as exc:  # llama-cpp-python raises ValueError/RuntimeError on a bad file
            raise ModelError(f"model {cfg.name!r}: llama.cpp cannot load {path}: {exc}") from exc
        self.cfg = cfg
        self.prompt = cfg.prompt
        self.choices = {label: cfg.prompt.choices.get(label, " " + label) for label in cfg.labels}
        self._n_vocab = self._llm.n_vocab()
        self._abort = _Abort()
        self._abort_lock = threading.Lock()
        llama_cpp.llama_set_abort_callback(self._llm._ctx.ctx, self._abort.callback, self._abort.data)
        self.prefix_tokens = self._llm.tokenize(render_prefix(self.prompt, self.choices).encode(), add_bos=True, special=False)
        self.choice_tokens = {
            label: self._llm.tokenize(text.encode(), add_bos=False, special=False) for label, text in self.choices.items()
        }
        for label, toks in self.choice_tokens.items():
            if not toks:
                raise ModelError(f"model {cfg.name!r}: choice text for {label!r} is empty after tokenizing")
        self._eol = set(self._llm.tokenize(b"\n", add_bos=False, special=False))
        self._rationale_prompt = self._llm.tokenize(cfg.rationale.prompt.encode(), add_bos=False, special=False)
        # tokens an event's suffix may take: what n_ctx leaves after the prefix, the longest choice and a rationale
        after = max(map(len, self.choice_tokens.values()))
        if cfg.rationale.enabled:
            after += len(self._rationale_prompt) + cfg.rationale.max_tokens
        self.suffix_room = cfg.n_ctx - len(self.prefix_tokens) - after
        template = len(self._llm.tokenize(self.prompt.event.replace("{event}", "").encode(), add_bos=False, special=False))
        if self.suffix_room < template + 16:
            raise ModelError(
                f"model {cfg.name!r}: n_ctx {cfg.n_ctx} leaves {self.suffix_room} tokens for an event after the"
                f" {len(self.prefix_tokens)}-token prefix, the choices and the rationale; raise n_ctx or shorten the prompt"
            )
        self._suffix_eval_s = 0.0
        self._eval(self.prefix_tokens, 0)  # the cached prefix: every decision starts from here
        self._prefix_next = self._last_logprobs()  # what follows the prefix itself (an empty suffix)
        self.calibration: list[float] | None = None
        if self.prompt.calibrate:
            example = self.prompt.examples[0].input if self.prompt.examples else {}
            probs = [choice_distribution(self.score(self.suffix_tokens(content_free(self.prompt, example, tok)), None))
                     for tok in CONTENT_FREE]
            mean = [sum(col) / len(col) for col in zip(*probs, strict=True)]
            self.calibration = [math.log(max(p, 1e-300)) for p in mean]
        self.nice = cfg.nice  # the worker thread, and the OpenMP team it starts, yield to the event loop
        super().__init__(name=cfg.name, version=cfg.version, sha256=cfg.sha256, labels=tuple(cfg.labels))

    # -- llama.cpp calls (worker thread only) ---------------------------------

    def _eval(self, tokens: Sequence[int], n_past: int) -> None:
        """Evaluate ``tokens`` at position ``n_past``; Cancelled if the abort flag stopped it."""
        if n_past + len(tokens) > self.cfg.n_ctx:
            raise ModelError(f"model {self.name!r}: prompt of {n_past + len(tokens)} tokens exceeds n_ctx {self.cfg.n_ctx}")
        self._llm.n_tokens = n_past  # eval() drops the KV cache beyond this position first
        try:
            self._llm.eval(tokens)
        except RuntimeError as exc:
            self._llm.n_tokens = n_past
            if self._abort.is_set:
                raise Cancelled("llama.cpp evaluation aborted at the deadline") from exc
            raise ModelError(f"model {self.name!r}: {exc}") from exc

    def _last_logprobs(self) -> Any:
        ptr = self._lc.llama_get_logits_ith(self._llm._ctx.ctx, -1)
        logits = self._np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))
        return log_softmax(logits.astype(self._np.float64))

    def score(self, suffix_tokens: Sequence[int], cancel: CancelFlag | None) -> list[float]:
        """Log-likelihood of each label's continuation after the prefix and ``suffix_tokens``, in label order."""
        base = len(self.prefix_tokens)
        t = time.monotonic()
        self._eval(suffix_tokens, base)
        self._suffix_eval_s = time.monotonic() - t
        after_suffix = base + len(suffix_tokens)
        first = self._last_logprobs() if suffix_tokens else self._prefix_next  # eval([]) leaves stale logits
        out: list[float] = []
        for label in self.cfg.labels:
            toks = self.choice_tokens[label]
            total = float(first[toks[0]])
            for i in range(1, len(toks)):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled while scoring")
                self._eval(toks[i - 1 : i], after_suffix + i - 1)
                total += float(self._last_logprobs()[toks[i]])
            out.append(total)
        return out

    def suffix_tokens(self, fields: Mapping[str, Any]) -> list[int]:
        """The event's suffix tokens, its text fields cut further where the suffix would not fit ``n_ctx``."""
        limit = self.prompt.max_field_chars
        while True:
            tokens = self._llm.tokenize(render_event(self.prompt, fields, limit).encode(), add_bos=False, special=False)
            if len(tokens) <= self.suffix_room:
                return list(tokens)
            if limit == 0:
                raise ModelError(f"model {self.name!r}: the event's other fields alone take {len(tokens)} tokens"
                                 f" ({self.suffix_room} fit after the prefix)")
            limit = int(limit * min(0.9, 0.95 * self.suffix_room / len(tokens)))

    def raw_eval(self, tokens: Sequence[int]) -> None:
        """Plain llama.cpp evaluation of ``tokens`` after the cached prefix (the bench's baseline)."""
        self._eval(tokens, len(self.prefix_tokens))

    def predict(self, inputs: Mapping[str, Any], cancel: CancelFlag) -> StageAnswer:
        with self._abort_lock:  # a late cancel of the previous call must not abort this one
            if self._closing:
                raise Cancelled("the stage is closing")
            self._abort.clear()
            if cancel.is_set():
                raise Cancelled("cancelled before run")
        suffix = self.suffix_tokens(inputs)
        logliks = self.score(suffix, cancel)
        probs = choice_distribution(logliks, self.calibration)
        order = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)
        top = order[0]
        margin = probs[top] - probs[order[1]] if len(order) > 1 else probs[top]
        extra: dict[str, Any] = {"margin": round(margin, 4)}
        if self.calibration is not None:
            raw = choice_distribution(logliks)
            extra["uncalibrated"] = {label: round(p, 4) for label, p in zip(self.labels, raw, strict=True)}
        label = self.labels[top]
        if self.cfg.rationale.enabled:
            extra["rationale"], extra["rationale_tokens"] = self._rationale(label, len(suffix), cancel)
        return StageAnswer(label, probs[top], dict(zip(self.labels, probs, strict=True)), extra=extra)

    def _rationale(self, label: str, n_suffix: int, cancel: CancelFlag) -> tuple[str, int]:
        """Greedy tokens after the chosen label, while the decision's budget allows; never changes the choice.

        A step starts only if its expected time (the last step's, or the suffix evaluation's
        for the first, which evaluates several tokens) plus ``reserve_ms`` still fits.
        """
        deadline = self.current_deadline
        reserve = self.cfg.rationale.reserve_ms / 1000
        pos = len(self.prefix_tokens) + n_suffix
        pending = [*self.choice_tokens[label], *self._rationale_prompt]
        step_s = max(self._suffix_eval_s, 0.001)
        out: list[int] = []
        try:
            for _ in range(self.cfg.rationale.max_tokens):
                if cancel.is_set() or time.monotonic() + step_s + reserve > deadline or pos + len(pending) > self.cfg.n_ctx:
                    break
                t = time.monotonic()
                self._eval(pending, pos)
                pos += len(pending)
                nxt = int(self._np.argmax(self._last_logprobs()))
                step_s = time.monotonic() - t
                if nxt in self._eol or self._llm.token_eos() == nxt:
                    break
                out.append(nxt)
                pending = [nxt]
        except (Cancelled, ModelError):
            pass  # the answer stands without (the rest of) its rationale
        return self._llm.detokenize(out).decode("utf-8", errors="replace").strip(), len(out)

    def call(self, inputs: Mapping[str, Any], deadline: float) -> Any:
        handle = super().call(inputs, deadline)
        original = handle.cancel

        def cancel() -> None:
            original()
            with self._abort_lock:
                if handle.cancel_event in self.running_cancels:
                    self._abort.set()  # llama.cpp stops at its next graph node

        handle.cancel = cancel  # type: ignore[method-assign]
        return handle

    async def close(self) -> None:
        self._closing = True  # queued calls are refused from now on
        with self._abort_lock:
            self._abort.set()  # and the running one stops at its next graph node
        await super().close()
        if self._thread.is_alive():  # freeing the model under a running evaluation would crash the process
            logging.getLogger(__name__).warning("model %s: worker still busy at close; its memory is left to the OS", self.name)
            return
        self._llm.close()
