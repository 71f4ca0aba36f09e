"""The text stage (agentd.stages.embedding) with the real all-MiniLM-L6-v2 int8 model on ONNX Runtime."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agentd.config.models import EmbeddingModelConfig
from agentd.errors import ModelError
from agentd.stages.base import CancelFlag
from agentd.stages.embedding import EmbeddingStage
from tests.conftest import MINILM

MODEL = MINILM
EXAMPLES = [
    {"text": "we ran out of gloves", "label": "restock"}, {"text": "please bring more tape", "label": "restock"},
    {"text": "the forklift is broken", "label": "maintenance"}, {"text": "the door hinge snapped", "label": "maintenance"},
    {"text": "there is a fire in the office", "label": "escalate"}, {"text": "a colleague is injured and bleeding", "label": "escalate"},
]


def stage(**over: Any) -> EmbeddingStage:
    return EmbeddingStage(EmbeddingModelConfig(name="req", backend="embedding", fields=["text"], examples=EXAMPLES, k=1, **{**MODEL, **over}))


@pytest.fixture(scope="module")
def req() -> EmbeddingStage:
    return stage()


def answer(st: EmbeddingStage, text: str) -> Any:
    return st.predict({"text": text}, CancelFlag())


def test_texts_take_the_label_of_their_most_similar_examples(req: EmbeddingStage) -> None:
    assert answer(req, "smoke and flames coming from the storeroom").label == "escalate"
    assert answer(req, "can we get another box of gloves").label == "restock"
    assert answer(req, "the pallet truck stopped working").label == "maintenance"
    a = answer(req, "we ran out of gloves")  # an example itself: similarity 1, a clear margin
    assert a.extra["similarity"] == pytest.approx(1.0, abs=1e-3) and a.confidence > 0.9
    assert set(a.scores) == {"restock", "maintenance", "escalate"} and sum(a.scores.values()) == pytest.approx(1.0)


def test_a_text_unlike_every_example_scores_out_of_distribution(req: EmbeddingStage) -> None:
    near = answer(req, "we ran out of gloves")
    far = answer(req, "Quarterly revenue of the European subsidiary rose by four percent.")
    assert near.extra["ood_score"] < 0.1 and far.extra["ood_score"] > 1.0


def test_an_empty_text_is_not_asked(req: EmbeddingStage) -> None:
    assert req.abstains({"text": "  "}) and req.abstains({}) and not req.abstains({"text": "hello"})


def test_examples_added_at_run_time_change_the_answer() -> None:
    st = stage()
    before = answer(st, "the cat got into the freezer room")
    st.add_examples([("the cat got into the freezer room", "maintenance")])
    after = answer(st, "the cat got into the freezer room")
    assert after.label == "maintenance" and after.extra["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert st.example_count == len(EXAMPLES) + 1 and (before.label != "maintenance" or before.extra["similarity"] < 0.99)
    with pytest.raises(ModelError, match="unknown label"):
        st.add_examples([("x", "dance")])


def test_batch_answers_equal_single_answers(req: EmbeddingStage) -> None:
    texts = ["we ran out of gloves", "there is a fire", "the lift is stuck"]
    single = [answer(req, t) for t in texts]
    batch = req.predict_batch([{"text": t} for t in texts])
    assert [a.label for a in batch] == [a.label for a in single]
    assert [round(a.confidence, 4) for a in batch] == [round(a.confidence, 4) for a in single]


def test_a_wrong_hash_or_a_missing_tokenizer_refuses_the_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"SHA-256|sha256"):
        stage(sha256="0" * 64)
    with pytest.raises(ModelError):
        stage(tokenizer=str(tmp_path / "none.json"))


def test_a_repeated_text_is_answered_from_its_kept_vector(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentd.stages import embedding

    st = stage()
    first = answer(st, "the forklift is making a noise")
    kept = st._recent["the forklift is making a noise"]
    batch = st.predict_batch([{"text": "the forklift is making a noise"}, {"text": "we need more tape"}, {"text": "we need more tape"}])
    assert st._recent["the forklift is making a noise"] is kept  # not embedded again
    assert (batch[0].label, batch[0].scores) == (first.label, first.scores)
    assert batch[1].scores == batch[2].scores and batch[1].label == "restock"
    st.add_examples([("the forklift is making a noise", "escalate")])  # a new example still changes the answer
    assert answer(st, "the forklift is making a noise").label == "escalate"
    monkeypatch.setattr(embedding, "RECENT_TEXTS", 3)
    st.predict_batch([{"text": f"note number {i}"} for i in range(5)])
    assert list(st._recent) == ["note number 2", "note number 3", "note number 4"]


def test_stages_on_one_model_file_share_one_session_and_answer_side_by_side() -> None:
    # Loaded, MiniLM takes about 40 MB (160 MB as packaged): the example's two text stages must not pay twice.
    def other_stage() -> EmbeddingStage:
        return EmbeddingStage(EmbeddingModelConfig(name="other", backend="embedding", fields=["note"], k=1, **MODEL,
                                                   examples=[{"text": "the door is open", "label": "restock"},
                                                             {"text": "smoke in the room", "label": "escalate"}]))

    a, b = stage(), other_stage()
    assert a._session is b._session
    assert stage(threads=2)._session is not a._session  # other session options: its own
    texts = [f"there is smoke in corridor {i}" if i % 2 else f"we need {i} more gloves" for i in range(40)]
    alone = [answer(a, t).scores for t in texts]
    other_alone = [b.predict({"note": t}, CancelFlag()).scores for t in texts]
    a, b = stage(), other_stage()  # fresh: no kept vectors, every text runs the session
    assert a._session is b._session
    seen: list[Any] = []

    def other() -> None:
        seen.extend(b.predict({"note": t}, CancelFlag()).scores for t in texts)

    t = threading.Thread(target=other)
    t.start()
    together = [answer(a, t).scores for t in texts]  # both stages' runs at once on the one session
    t.join()
    assert together == alone
    assert seen == other_alone


def test_a_texts_vector_does_not_depend_on_the_texts_beside_it() -> None:
    # A safeguard: with a model that quantised its activations per run (tried, not kept), a text
    # batched with longer ones (and their padding) got another vector, so a decision would have
    # hung on what else was queued. The shipped model quantises per token; one text a run holds
    # for any model.
    st = stage()
    sizes: list[int] = []
    real = st._session

    class Recording:  # the real session, its batch sizes written down
        def run(self, names: Any, feeds: dict[str, Any]) -> Any:
            sizes.append(len(feeds["input_ids"]))
            return real.run(names, feeds)

    st._session = Recording()
    texts = [f"request number {i}: {'please, it is urgent, ' * (i % 7)}bring tape" for i in range(40)]
    vectors = st.embed(texts)
    assert sizes == [1] * len(texts) and vectors.shape == (len(texts), 384)
    assert all(np.array_equal(vectors[i], st.embed([texts[i]])[0]) for i in range(0, 40, 7))
    assert np.array_equal(st.embed(texts[::-1])[::-1], vectors)
    st._recent.clear()
    batched = st.predict_batch([{"text": t} for t in texts[:12]])
    st._recent.clear()
    assert [b.scores for b in batched] == [answer(st, t).scores for t in texts[:12]]
