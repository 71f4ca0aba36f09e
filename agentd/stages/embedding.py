"""The text stage: a text is classified by its similarity to labelled examples.

A small sentence-embedding model (all-MiniLM-L6-v2, int8 ONNX, on ONNX Runtime; its
tokenizer through Hugging Face ``tokenizers``) turns the event's text fields and every
example into unit vectors (mean pooling over the attention mask, as sentence-transformers
does). With ``head: linear`` (the default) a softmax classifier trained on the examples'
vectors gives the label distribution; with ``head: nearest`` a label's similarity is the
mean of its ``k`` most similar examples and a softmax over those (``temperature``) is the
distribution. Either way the confidence is the top label's share, so the margin between the
best two labels is what makes it sure. How far
the text is from every example is its out-of-distribution score: ``(1 - nearest) / (1 -
min_similarity)``, above 1 when even the nearest example is less similar than
``min_similarity``. An event whose text fields are all empty is not asked (``abstained``).

Examples come from the config; more can be added at run time (``add_examples``), which is
how labels from operators make the stage learn without retraining anything.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agentd.errors import ModelError
from agentd.stages.base import CancelFlag, Cancelled, StageAnswer, ThreadedStage
from agentd.stages.loading import verify_file
from agentd.stages.onnx import onnx_session

if TYPE_CHECKING:
    from agentd.config.models import EmbeddingModelConfig

MAX_LEARNED = 5000  # examples from labels a text stage keeps (the newest)
BATCH = 32  # calls the worker takes at once (each text still runs alone: ``EmbeddingStage.embed``)
RECENT_TEXTS = 2048  # vectors of texts answered lately, kept by the worker (384 floats each: 3 MB in all)


class EmbeddingStage(ThreadedStage):
    """Nearest-example text classification; ``predict`` embeds one text and compares it with the examples."""

    max_batch = BATCH

    def __init__(self, cfg: EmbeddingModelConfig) -> None:
        tok_path = Path(cfg.tokenizer)
        verify_file(tok_path, cfg.tokenizer_sha256, what=f"model {cfg.name!r} tokenizer")
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ModelError(f"model {cfg.name!r}: {exc.name} is not installed; install the extra: pip install 'agentd[text]'") from exc
        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # tokenizers raises its own exception type
            raise ModelError(f"model {cfg.name!r}: cannot read the tokenizer {tok_path}: {exc}") from exc
        tokenizer.enable_truncation(max_length=cfg.max_tokens)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        session, _ = onnx_session(cfg.name, Path(cfg.path), cfg.sha256, threads=cfg.threads,
                                  headroom_mb=cfg.memory_headroom_mb, working_mb=64)
        self._tokenizer, self._session = tokenizer, session
        self._inputs = {i.name for i in session.get_inputs()}
        self._fields = tuple(cfg.fields)
        self._k, self._temperature, self._min_similarity = cfg.k, cfg.temperature, cfg.min_similarity
        self._head = cfg.head
        self._index: tuple[np.ndarray, list[tuple[str, str]], dict[str, np.ndarray], LinearHead | None] = (
            np.zeros((0, 1), dtype=np.float32), [], {}, None)
        self._configured: dict[tuple[str, str], None] = {}  # from the config, in order
        self._learned: OrderedDict[str, tuple[str, str]] = OrderedDict()  # decision id -> (text, label), from labels
        self._vectors: dict[str, np.ndarray] = {}  # text -> unit vector
        self._lock = threading.Lock()  # one rebuild at a time (the engine learns off the event loop)
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()  # text -> unit vector, used by the worker thread only
        super().__init__(name=cfg.name, version=cfg.version, sha256=cfg.sha256, labels=tuple(cfg.labels))
        self.add_examples([(e.text, e.label) for e in cfg.examples])

    # -- examples ------------------------------------------------------------------

    def add_examples(self, examples: Sequence[tuple[str, str]]) -> int:
        """Embed and keep more configured (text, label) examples (each once); how many were new."""
        self._check_labels(label for _, label in examples)
        with self._lock:
            fresh = [(t.strip(), lab) for t, lab in examples if t.strip() and (t.strip(), lab) not in self._configured]
            self._configured.update(dict.fromkeys(fresh))
            if fresh:
                self._rebuild()
            return len(fresh)

    learns = True

    def learn(self, inputs: Mapping[str, Any], label: str, *, key: str) -> bool:
        """The event's text becomes an example of ``label``, under ``key`` (the decision's id, so
        that a corrected label replaces the mistaken one); False if it had no text or was known."""
        return self.learn_many([(key, inputs, label)]) > 0

    def learn_many(self, items: Sequence[tuple[str, Mapping[str, Any], str]]) -> int:
        """Learn several (key, inputs, label) at once: one embedding batch and one refit (a start-up's labels).

        Blocking (the embeddings and the refit): the engine calls it off the event loop. At most
        MAX_LEARNED learned examples are kept; the oldest go first.
        """
        self._check_labels(label for _, _, label in items)
        with self._lock:
            changed = 0
            for key, inputs, label in items:
                text = self.text_of(inputs)
                if not text or self._learned.get(key) == (text, label):
                    continue
                self._learned.pop(key, None)
                self._learned[key] = (text, label)
                changed += 1
            while len(self._learned) > MAX_LEARNED:
                self._learned.popitem(last=False)
            if changed:
                self._rebuild()
            return changed

    def _check_labels(self, labels: Iterable[str]) -> None:
        unknown = sorted({label for label in labels if label not in self.labels})
        if unknown:
            raise ModelError(f"model {self.name!r}: unknown label(s) {', '.join(unknown)} (known: {', '.join(self.labels)})")

    def _rebuild(self) -> None:
        """The examples' vectors (cached by text), their rows per label, and the head; swapped in at once."""
        texts = list(dict.fromkeys([*self._configured, *self._learned.values()]))
        missing = [t for t, _ in texts if t not in self._vectors]
        if missing:
            for text, vector in zip(missing, self.embed(missing), strict=True):
                self._vectors[text] = vector
        keep = {t for t, _ in texts}
        for text in [t for t in self._vectors if t not in keep]:
            del self._vectors[text]
        vectors = np.stack([self._vectors[t] for t, _ in texts])
        rows = {label: np.array([i for i, (_, lab) in enumerate(texts) if lab == label], dtype=np.int64) for label in self.labels}
        head: LinearHead | None = None
        if self._head == "linear":
            y = np.array([self.labels.index(lab) for _, lab in texts], dtype=np.int64)
            head = LinearHead.fit(vectors, y, len(self.labels))
        # one assignment: the worker thread reads either the old index or the new one, never a mix
        self._index = (vectors, texts, rows, head)

    @property
    def example_count(self) -> int:
        return len(self._index[1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of ``texts`` (mean pooling over the attention mask, then L2 normalisation).

        One text a session run, so that a text's vector is the same bytes whatever was queued
        beside it, for any model: batched, padding changes the order of the float sums, and a
        model that quantised its activations per run would round on its neighbours (the example's
        integer-matmul MiniLM quantises per token and is as fast alone: 2-3 ms a text). And ONNX
        Runtime's arena keeps the memory of its largest run: one run over a config's 232 examples
        kept about 300 MB for good."""
        return np.concatenate([self._embed([text]) for text in texts])

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        try:
            hidden = self._session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
        except Exception as exc:
            raise ModelError(f"model {self.name!r}: run failed: {exc}") from exc
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: np.ndarray = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return unit

    # -- answering -----------------------------------------------------------------

    def text_of(self, inputs: Mapping[str, Any]) -> str:
        """The text the stage reads: its fields' non-empty values, joined by " / "."""
        return " / ".join(str(v).strip() for f in self._fields if isinstance(v := inputs.get(f), str) and v.strip())

    def abstains(self, inputs: Mapping[str, Any]) -> bool:
        return not self.text_of(inputs)

    def predict(self, inputs: Mapping[str, Any], cancel: CancelFlag) -> StageAnswer:
        if cancel.is_set():
            raise Cancelled("cancelled before run")
        return self._answer(self._vectors_of([self.text_of(inputs)])[0])

    def predict_batch(self, batch: list[Mapping[str, Any]]) -> list[StageAnswer]:
        return [self._answer(v) for v in self._vectors_of([self.text_of(i) for i in batch])]

    def _vectors_of(self, texts: list[str]) -> list[np.ndarray]:
        """The texts' unit vectors: a text answered lately (gateways repeat their notes) is not embedded
        again; the model is deterministic, so its answer is the same. The newest RECENT_TEXTS are kept."""
        recent = self._recent
        found: dict[str, np.ndarray] = {}
        for t in texts:
            v = recent.get(t)
            if v is not None:
                recent.move_to_end(t)
                found[t] = v
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            for t, v in zip(missing, self.embed(missing), strict=True):
                v.setflags(write=False)  # shared by every answer of this text
                found[t] = recent[t] = v
            while len(recent) > RECENT_TEXTS:
                recent.popitem(last=False)
        return [found[t] for t in texts]

    def _answer(self, vector: np.ndarray) -> StageAnswer:
        vectors, known, label_rows, head = self._index
        sims = vectors @ vector
        if head is not None:
            probs = head.probabilities(vector)
        else:
            per_label = []
            for label in self.labels:
                rows = label_rows[label]
                per_label.append(float(np.sort(sims[rows])[-self._k:].mean()) if len(rows) else -1.0)
            values = np.array(per_label)
            exp = np.exp((values - values.max()) / self._temperature)
            probs = exp / exp.sum()
        scores = dict(zip(self.labels, (float(p) for p in probs), strict=True))
        best = max(scores, key=scores.__getitem__)
        nearest = int(np.argmax(sims))
        similarity = float(sims[nearest])
        return StageAnswer(best, scores[best], scores, extra={
            "similarity": round(similarity, 4),
            "nearest": known[nearest][0][:80],
            "ood_score": round((1.0 - similarity) / (1.0 - self._min_similarity), 4),
        })


class LinearHead:
    """A softmax classifier over unit embeddings (cosine features scaled by ``SCALE``), L2-regularised,
    fitted by ``EPOCHS`` steps of full-batch gradient descent from zero: a function of the examples
    alone. (A warm start at each label, tried first, trains the head further with every label: on
    360 labels it was overconfident on new requests, ECE 0.062 against 0.032; docs/BENCHMARKS.md.)"""

    SCALE = 20.0
    L2 = 1e-2
    STEP = 0.5
    EPOCHS = 500

    def __init__(self, weights: np.ndarray, bias: np.ndarray) -> None:
        self.weights, self.bias = weights, bias

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, n_labels: int) -> LinearHead:
        xs = x.astype(np.float64) * cls.SCALE
        w, b = np.zeros((x.shape[1], n_labels)), np.zeros(n_labels)
        rows = np.arange(len(y))
        for _ in range(cls.EPOCHS):
            z = xs @ w + b
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            p[rows, y] -= 1.0
            p /= len(y)
            w -= cls.STEP * (xs.T @ p + cls.L2 * w)
            b -= cls.STEP * p.sum(axis=0)
        return cls(w, b)

    def probabilities(self, vector: np.ndarray) -> np.ndarray:
        z = (vector.astype(np.float64) * self.SCALE) @ self.weights + self.bias
        e = np.exp(z - z.max())
        out: np.ndarray = e / e.sum()
        return out
