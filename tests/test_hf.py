"""HF classifier backend on a tiny BERT made here (random weights, 3 labels, CPU, seconds)."""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from llm_cascade.backends.base import resolve
from llm_cascade.backends.fake import FakeBackend
from llm_cascade.backends.hf import HFClassifierBackend, Scores, pick_device
from llm_cascade.core.agreement import confidence
from llm_cascade.core.errors import ConfigError
from llm_cascade.core.normalize import LabelSet
from llm_cascade.core.router import Router, Tier
from llm_cascade.core.types import Request

WORDS = [
    *("the", "a", "this", "phone", "movie", "is", "was", "not", "very"),
    *("good", "great", "love", "bad", "awful", "hate", "ok", "fine"),
]
TEXTS = [
    "good",
    "this phone is great",
    "the movie was awful awful awful",
    "not very good",
    "i hate this",
    "ok fine",
    "love love love the phone",
    "bad",
]
LABEL_MAP = {"LABEL_0": "negative", "LABEL_1": "neutral", "LABEL_2": "positive"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    BertTokenizer(vocab=vocab).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
        initializer_range=0.5,  # large random weights: distinct, confident-ish outputs per text
    )
    BertForSequenceClassification(config).save_pretrained(path)
    return path


@pytest.fixture
def backend(tiny_model: Path) -> HFClassifierBackend:
    b = HFClassifierBackend(str(tiny_model), label_map=LABEL_MAP, max_wait_ms=20)
    yield b  # type: ignore[misc]
    b.close()


def test_scores_metrics() -> None:
    uniform = Scores.of([1 / 3] * 3)
    assert uniform.max_prob == pytest.approx(1 / 3) and uniform.margin == pytest.approx(0)
    assert uniform.entropy == pytest.approx(0) and uniform.neg_entropy == pytest.approx(-math.log(3))
    sure = Scores.of([0.0, 1.0, 0.0])
    assert (sure.max_prob, sure.margin, sure.entropy, sure.neg_entropy) == (1.0, 1.0, 1.0, 0.0)
    mid = Scores.of([0.2, 0.5, 0.3])
    assert mid.margin == pytest.approx(0.2) and 0 < mid.entropy < 1


def test_cpu_is_chosen_without_a_gpu() -> None:
    import torch

    device, dtype = pick_device("auto")
    if torch.cuda.is_available():
        assert device == "cuda" and dtype == torch.float16
    else:
        assert device == "cpu" and dtype == torch.float32


def test_bfloat16_on_cpu_keeps_the_labels(tiny_model: Path) -> None:
    """The opt-in CPU half precision: weights really are bfloat16, and the answers match float32's."""
    import torch

    full = HFClassifierBackend(str(tiny_model), device="cpu")
    half = HFClassifierBackend(str(tiny_model), device="cpu", dtype="bfloat16")
    try:
        assert half.dtype == torch.bfloat16 and next(half._net.parameters()).dtype == torch.bfloat16
        assert full.dtype == torch.float32
        a, b = full.classify(TEXTS), half.classify(TEXTS)
        assert [c.label for c in a] == [c.label for c in b]
        for x, y in zip(a, b, strict=True):
            assert x.probs == pytest.approx(y.probs, abs=0.03)  # bfloat16 keeps ~3 significant digits
    finally:
        full.close()
        half.close()


async def test_completion_has_label_probs_confidence_and_usage(backend: HFClassifierBackend, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    completion = await backend.complete(Request.from_prompt("this phone is great", system="Classify sentiment."))
    assert completion.text in {"negative", "neutral", "positive"}
    assert completion.probs is not None and set(completion.probs) == {"negative", "neutral", "positive"}
    assert sum(completion.probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert completion.text == max(completion.probs, key=completion.probs.__getitem__)
    assert completion.confidence == pytest.approx(max(completion.probs.values()))
    assert completion.logprob == pytest.approx(math.log(completion.confidence))
    # Usage counts the classified text only (the user turn), with the model's own tokenizer.
    tokens = len(AutoTokenizer.from_pretrained(tiny_model)("this phone is great")["input_ids"])
    assert completion.usage.input_tokens == tokens == 6
    assert completion.usage.output_tokens == 0 and not completion.usage.estimated
    assert completion.raw.scores.margin == pytest.approx(
        sorted(completion.probs.values())[-1] - sorted(completion.probs.values())[-2]
    )


async def test_metric_option_chooses_the_confidence(tiny_model: Path) -> None:
    outs = {}
    for metric in ("max_prob", "margin", "entropy"):
        b = HFClassifierBackend(str(tiny_model), metric=metric)  # type: ignore[arg-type]
        outs[metric] = await b.complete(Request.from_prompt("not very good"))
        b.close()
    scores = outs["max_prob"].raw.scores
    assert outs["max_prob"].confidence == pytest.approx(scores.max_prob)
    assert outs["margin"].confidence == pytest.approx(scores.margin)
    assert outs["entropy"].confidence == pytest.approx(scores.entropy)
    assert len({round(c.confidence or 0, 6) for c in outs.values()}) == 3
    assert outs["max_prob"].text.startswith("LABEL_")  # no label map: the model's own labels


async def test_concurrent_requests_share_forward_passes_with_identical_results(
    backend: HFClassifierBackend,
) -> None:
    alone = backend.classify(TEXTS, batch_size=1)
    before = backend.batcher.stats.batches
    completions = await asyncio.gather(*(backend.complete(Request.from_prompt(t)) for t in TEXTS * 4))
    batches = backend.batcher.stats.batches - before
    assert batches < len(completions) / 4, backend.batcher.stats.sizes
    for c, a in zip(completions, alone * 4, strict=True):
        assert c.text == a.label
        for label, p in a.probs.items():
            assert c.probs is not None and c.probs[label] == pytest.approx(p, abs=1e-5)  # padding changes nothing


async def test_compute_is_priced_per_hour(tiny_model: Path) -> None:
    priced = HFClassifierBackend(str(tiny_model), price_per_hour="3.60")
    completions = await asyncio.gather(*(priced.complete(Request.from_prompt(t)) for t in TEXTS))
    for c in completions:
        assert c.raw.compute_s > 0
        assert c.raw.cost_usd == Decimal(repr(c.raw.compute_s)) * Decimal("3.60") / 3600
    total = sum((c.raw.compute_s for c in completions), 0.0)
    assert total == pytest.approx(priced.batcher.stats.compute_s)
    unpriced = HFClassifierBackend(str(tiny_model))
    assert (await unpriced.complete(Request.from_prompt("good"))).raw.cost_usd is None
    priced.close()
    unpriced.close()


async def test_router_prices_local_compute_on_the_dollar_axis(tiny_model: Path) -> None:
    from llm_cascade.spend.pricing import PriceTable

    hf = HFClassifierBackend(str(tiny_model), price_per_hour=7.2, label_map=LABEL_MAP)
    table = PriceTable(fallback=None)
    table.add(hf.name, hf.price_entry(as_of="2026-01-01"))
    router = Router([Tier([hf])], normalizer=LabelSet(["negative", "neutral", "positive"]), prices=table)
    results = await asyncio.gather(*(router.route(t) for t in TEXTS))
    for r in results:
        (call,) = r.calls
        assert call.cost_usd is not None and call.cost_usd > 0
        assert r.cost_usd == call.cost_usd
    total = sum((r.cost_usd or Decimal(0) for r in results), Decimal(0))
    expected = Decimal(repr(hf.batcher.stats.compute_s)) * Decimal("7.2") / 3600
    assert abs(total - expected) < Decimal("1e-12")
    with pytest.raises(ConfigError):
        HFClassifierBackend(str(tiny_model)).price_entry()
    hf.close()


async def test_as_a_confidence_tier_in_a_router(tiny_model: Path) -> None:
    labels = LabelSet(["negative", "neutral", "positive"])
    hf = resolve(f"hf:{tiny_model}", label_map=LABEL_MAP)
    assert isinstance(hf, HFClassifierBackend) and hf.name == f"hf:{tiny_model}"
    probe = await hf.complete(Request.from_prompt("good"))
    assert probe.confidence is not None
    llm = FakeBackend("judge", "Sentiment: Positive.")
    below = Router([Tier([hf], confidence(probe.confidence + 1e-3)), Tier([llm])], normalizer=labels)
    escalated = await below.route(Request.from_prompt("good"))
    assert escalated.tier == 1 and escalated.answer == "positive" and llm.calls == 1
    above = Router([Tier([hf], confidence(probe.confidence - 1e-3)), Tier([llm])], normalizer=labels)
    kept = await above.route(Request.from_prompt("good"))
    assert kept.tier == 0 and kept.answer == probe.text and llm.calls == 1
    assert kept.calls[0].confidence == pytest.approx(probe.confidence)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"metric": "variance"}, "hf.metric"),
        ({"label_map": {"LABEL_9": "x"}}, "hf.label_map"),
        ({"price_per_hour": -1}, "hf.price_per_hour"),
        ({"price_per_hour": "cheap"}, "hf.price_per_hour"),
        ({"device": "tpu"}, "hf.device"),
        ({"dtype": "int4"}, "hf.dtype"),
        ({"device": "cpu", "dtype": "float16"}, "hf.dtype"),
        ({"max_length": 0}, "hf.max_length"),
        ({"chunk_size": 0}, "hf.chunk_size"),
        ({"max_batch_size": 0}, "MicroBatcher.max_batch_size"),
    ],
)
def test_bad_config_fails_at_construction(tiny_model: Path, kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        HFClassifierBackend(str(tiny_model), **kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_missing_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        HFClassifierBackend(str(tmp_path / "nowhere"))
    assert err.value.field == "hf.model"


async def test_a_classifier_refuses_request_parameters_it_cannot_honour(backend: HFClassifierBackend) -> None:
    """A classifier picks one label: stop sequences, tools and response formats have no meaning for it, so they are
    refused by name (the router raises that, never a silent "no answer"); seed and top_p cannot change an arg-max."""
    from llm_cascade import Router
    from llm_cascade.core.errors import UnsupportedParameter

    router = Router([[backend]])
    for param, value in (("stop", ["x"]), ("tools", [{"type": "function"}]), ("response_format", {"type": "text"})):
        with pytest.raises(UnsupportedParameter) as info:
            await router.route("great movie", **{param: value})
        assert info.value.param == param
    assert (await router.route("great movie", seed=1, top_p=0.5)).answer is not None
