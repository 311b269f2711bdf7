"""Local HuggingFace text classifiers as cascade members (``hf:<path or hub id>``).

The classic model cascade (a small classifier answers when its max-softmax confidence passes a threshold tuned on
validation data, else a bigger model decides) needs three things from a local model, and this backend gives them:

- the label and the whole probability vector, with the confidence metrics of the cascade literature: max
  probability, margin (top-1 minus top-2) and negative entropy; ``metric`` picks the one the router's
  ``confidence(θ)`` rule sees;
- labels in the tier's vocabulary (``label_map={"LABEL_0": "negative"}``), so a classifier and an LLM can agree;
- a price: local compute is not free, so each request is charged its share of its batch's compute seconds at
  ``price_per_hour``, which puts local and API tiers on one dollar axis.

Concurrent requests are gathered into one forward pass by :class:`~llm_cascade.backends.batching.MicroBatcher` (in a
worker
thread, so the event loop stays free). The device is chosen once: CUDA in half precision when present, else CPU.
torch and transformers are imported only when a backend is built (``pip install 'llm-cascade[hf]'``).
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal

from ..core.errors import ConfigError, MissingDependencyError
from ..core.messages import text_only
from ..core.types import Completion, Request, Usage
from .batching import MicroBatcher

if TYPE_CHECKING:
    from ..spend.pricing import PriceEntry

Metric = Literal["max_prob", "margin", "entropy"]
METRICS: tuple[Metric, ...] = ("max_prob", "margin", "entropy")


@dataclass(frozen=True, slots=True)
class Scores:
    """Confidence metrics of one probability vector.

    ``neg_entropy`` is Σ p·log p (<= 0, natural log); ``entropy`` rescales it to [0, 1] as 1 - H/log K, so that it
    can be a ``confidence`` like the other two (1 = one-hot, 0 = uniform).
    """

    max_prob: float
    margin: float
    neg_entropy: float
    entropy: float

    @classmethod
    def of(cls, probs: Sequence[float]) -> Scores:
        ordered = sorted(probs, reverse=True)
        top = ordered[0]
        second = ordered[1] if len(ordered) > 1 else 0.0
        neg_h = sum(p * math.log(p) for p in probs if p > 0.0)
        k = len(probs)
        norm = 1.0 + neg_h / math.log(k) if k > 1 else 1.0
        return cls(top, top - second, neg_h, min(1.0, max(0.0, norm)))

    def get(self, metric: Metric) -> float:
        return float(getattr(self, metric))


@dataclass(frozen=True, slots=True)
class Classification:
    """One classified text: label, distribution, metrics, and what it cost (the ``raw`` of the Completion)."""

    label: str
    probs: Mapping[str, float]
    scores: Scores
    input_tokens: int
    compute_s: float
    batch_size: int
    cost_usd: Decimal | None


def _price(value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ConfigError("hf.price_per_hour", f"must be a number of USD per hour, got {value!r}")
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError("hf.price_per_hour", f"must be a number of USD per hour, got {value!r}") from None
    if not price.is_finite() or price < 0:
        raise ConfigError("hf.price_per_hour", f"must be a finite number >= 0, got {value!r}")
    return price


DTYPES = ("auto", "float32", "float16", "bfloat16")


def pick_device(device: str = "auto", dtype: str = "auto") -> tuple[str, Any]:
    """The device and the weights' precision.

    ``device="auto"`` takes CUDA when a GPU is visible, else the CPU. ``dtype="auto"`` is float16 on a GPU (half the
    memory traffic, tensor cores) and float32 on a CPU, where half precision is only a gain on CPUs with native
    bfloat16 instructions (AVX512-BF16, AMX): ask for "bfloat16" there explicitly.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        return device, torch.float16 if device.startswith("cuda") else torch.float32
    return device, getattr(torch, dtype)


# A classifier picks the arg-max label: sampling settings cannot change it (accepted); the rest has no meaning here.
SUPPORTED_PARAMS = ("seed", "top_p")


class HFClassifierBackend:
    """A transformers sequence-classification model answering with a label and its confidence.

    ``model`` is a local directory (or a hub id where a network is allowed). Options: ``metric`` (which score becomes
    ``Completion.confidence``), ``label_map`` (model label -> answer), ``max_batch_size`` / ``max_wait_ms``
    (dynamic batching; ``max_batch_size=1`` turns it off), ``max_length`` (tokens kept per text), ``chunk_size``
    (texts of similar length computed together inside a batch; default 16 on CPU, the whole batch on a GPU), ``device``
    ("auto", "cpu", "cuda", "cuda:1"), ``dtype`` ("auto": float16 on a GPU, float32 on a CPU; or "float32", "float16",
    "bfloat16"), ``price_per_hour`` (USD per hour of compute; None = unknown price),
    ``name`` (defaults to "hf:<model>").

    The text classified is the request's last user message: give LLM members instructions in a system message and
    the bare input as the user turn, and every tier sees the same input.
    """

    supports_logprobs = True

    def __init__(
        self,
        model: str,
        *,
        metric: Metric = "max_prob",
        label_map: Mapping[str, str] | None = None,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_length: int = 128,
        chunk_size: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        price_per_hour: float | str | Decimal | None = None,
        name: str | None = None,
    ) -> None:
        if metric not in METRICS:
            raise ConfigError("hf.metric", f"must be one of {', '.join(METRICS)}, got {metric!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ConfigError("hf.max_length", f"must be an integer >= 1, got {max_length!r}")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ConfigError("hf.chunk_size", f"must be an integer >= 1, got {chunk_size!r}")
        if not isinstance(device, str) or not (device in ("auto", "cpu") or device.startswith("cuda")):
            raise ConfigError("hf.device", f"must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
        if dtype not in DTYPES:
            raise ConfigError("hf.dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.price_per_hour = _price(price_per_hour)
        self.metric: Metric = metric
        self.max_length = max_length
        self.model = model
        self.name = name or f"hf:{model}"
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as exc:
            raise MissingDependencyError(exc.name or "transformers", "hf") from None
        self._torch = torch
        self.device, self.dtype = pick_device(device, dtype)
        if self.device == "cpu" and dtype == "float16":
            raise ConfigError("hf.dtype", "float16 runs slowly or not at all on a CPU: use 'bfloat16' or 'float32'")
        # A GPU wants the whole batch in one pass; a CPU gains more from less padding than from wider matrices.
        self.chunk_size: int = chunk_size or (max(1, max_batch_size) if self.device.startswith("cuda") else 16)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(model)
            net = AutoModelForSequenceClassification.from_pretrained(model, dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise ConfigError("hf.model", f"cannot load a text-classification model from {model!r}: {exc}") from None
        self._net = net.to(self.device).eval()
        id2label: Mapping[int, str] = self._net.config.id2label
        mapping = dict(label_map or {})
        unknown = set(mapping) - set(id2label.values())
        if unknown:
            known = ", ".join(id2label.values())
            raise ConfigError("hf.label_map", f"labels {sorted(unknown)} are not the model's labels ({known})")
        self.labels: tuple[str, ...] = tuple(mapping.get(id2label[i], id2label[i]) for i in range(len(id2label)))
        self._batcher: MicroBatcher[str, tuple[list[float], int]] = MicroBatcher(
            self._forward, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms
        )

    @property
    def batcher(self) -> MicroBatcher[str, tuple[list[float], int]]:
        """The micro-batcher in front of the model (its ``stats`` say how requests were grouped)."""
        return self._batcher

    def _forward(self, texts: Sequence[str]) -> list[tuple[list[float], int]]:
        """Forward passes over ``texts``: (probabilities, prompt tokens) per text. Runs in the batcher's thread.

        Texts are sorted by length and run in chunks of ``chunk_size``, each padded only to its own longest text:
        tweets range from 5 to 60 tokens, and padding a whole batch to its longest member wastes half the compute.
        """
        torch = self._torch
        enc = self._tokenizer(list(texts), truncation=True, max_length=self.max_length)
        ids: list[list[int]] = enc["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[tuple[list[float], int]] = [([], 0)] * len(ids)
        for start in range(0, len(order), self.chunk_size):
            chunk = order[start : start + self.chunk_size]
            padded = self._tokenizer.pad({k: [enc[k][i] for i in chunk] for k in enc}, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in padded.items()}
            with torch.inference_mode():
                logits = self._net(**batch).logits
            probs = torch.softmax(logits.float(), dim=-1).cpu().tolist()
            for i, p in zip(chunk, probs, strict=True):
                out[i] = (p, len(ids[i]))
        return out

    def _classification(self, probs: list[float], tokens: int, compute_s: float, batch_size: int) -> Classification:
        best = max(range(len(probs)), key=probs.__getitem__)
        return Classification(
            label=self.labels[best],
            probs=dict(zip(self.labels, probs, strict=True)),
            scores=Scores.of(probs),
            input_tokens=tokens,
            compute_s=compute_s,
            batch_size=batch_size,
            cost_usd=self.cost(compute_s),
        )

    def cost(self, compute_s: float) -> Decimal | None:
        """The price of ``compute_s`` seconds of this model's compute, or None when no price was given."""
        if self.price_per_hour is None:
            return None
        return Decimal(repr(compute_s)) * self.price_per_hour / Decimal(3600)

    def price_entry(self, source: str = "price_per_hour option", as_of: str | None = None) -> PriceEntry:
        """This model's entry for a :class:`~llm_cascade.spend.pricing.PriceTable`: its compute seconds at
        ``price_per_hour``.

        ``table.add(backend.name, backend.price_entry())`` lets a Router price local calls on the same dollar axis as
        API calls (the router passes each call's ``compute_s`` to the table).
        """
        from ..spend.pricing import PriceEntry

        if self.price_per_hour is None:
            raise ConfigError("hf.price_per_hour", "no price_per_hour was given, so there is no price entry")
        return PriceEntry.local(self.price_per_hour, source=source, as_of=as_of or datetime.date.today().isoformat())

    def classify(self, texts: Sequence[str], batch_size: int = 64) -> list[Classification]:
        """Classify many texts synchronously in fixed batches (calibration and offline evaluation, not the router)."""
        out: list[Classification] = []
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            start = time.perf_counter()
            rows = self._forward(chunk)
            share = (time.perf_counter() - start) / len(chunk)
            out.extend(self._classification(p, n, share, len(chunk)) for p, n in rows)
        return out

    async def complete(self, request: Request) -> Completion:
        # A classifier picks the arg-max label: sampling settings (temperature, top_p, seed) and max_tokens cannot
        # change that, so they are accepted; stop sequences, tools and response formats have no meaning and are refused.
        request.refuse(self.name, SUPPORTED_PARAMS)
        if not request.plain:  # it reads the last user turn's text: an image or a tool turn would be dropped
            text_only(request.messages, self.name)
        start = time.perf_counter()
        (probs, tokens), share, size = await self._batcher.submit_timed(request.prompt)
        result = self._classification(probs, tokens, share, size)
        conf = result.scores.get(self.metric)
        return Completion(
            text=result.label,
            model=self.model,
            usage=Usage(input_tokens=tokens, output_tokens=0),
            latency_s=time.perf_counter() - start,
            finish_reason="stop",
            logprob=math.log(result.scores.max_prob) if result.scores.max_prob > 0 else None,
            confidence=conf,
            probs=result.probs,
            raw=result,
            compute_s=share,
            cost_usd=result.cost_usd,
        )

    def close(self) -> None:
        self._batcher.close()

    async def aclose(self) -> None:
        """:meth:`close` for :meth:`Router.aclose` (and the wrappers that pass ``aclose`` through)."""
        self.close()

    def __repr__(self) -> str:
        return f"HFClassifierBackend({self.model!r}, device={self.device!r}, metric={self.metric!r})"
