"""The proxy's fast JSON (orjson) must not change what it accepts, refuses or renders: whatever orjson refuses is
parsed or rendered again by the standard library, with its answers and its errors."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("starlette")

from llm_cascade.serve.schema import InputError, parse_chat
from llm_cascade.serve.server import _dumps

MODELS = frozenset({"qa"})


def chat(**fields: object) -> dict[str, object]:
    return {"model": "qa", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_integers_past_64_bits_are_still_accepted() -> None:
    big = 2**70  # orjson refuses integers past 64 bits; json does not (a bookkeeping field may hold one)
    parsed = parse_chat(json.dumps(chat(metadata={"trace": big})).encode(), MODELS)
    assert (parsed.model_extra or {})["metadata"] == {"trace": big}


def test_a_utf16_body_is_still_read() -> None:
    parsed = parse_chat(json.dumps(chat(user="ü")).encode("utf-16"), MODELS)  # json detects the encoding
    assert parsed.user == "ü"


def test_nan_is_a_422_naming_the_field_not_a_400() -> None:
    with pytest.raises(InputError) as caught:
        parse_chat(b'{"model":"qa","messages":[{"role":"user","content":"hi"}],"temperature":NaN}', MODELS)
    assert (caught.value.status, caught.value.param) == (422, "temperature")


def test_broken_json_is_still_a_400_with_json_s_message() -> None:
    with pytest.raises(InputError) as caught:
        parse_chat(b'{"model": "qa", "messages": [', MODELS)
    assert caught.value.status == 400 and caught.value.code == "invalid_json"
    assert "Expecting value" in caught.value.message  # json's wording, not orjson's


def test_tags_travel_in_the_request() -> None:
    request = parse_chat(json.dumps(chat()).encode(), MODELS).to_request({"key": "team-a", "user": "u1"})
    assert dict(request.metadata) == {"key": "team-a", "user": "u1"}
    assert dict(parse_chat(json.dumps(chat()).encode(), MODELS).to_request().metadata) == {}


@pytest.mark.parametrize(
    "content",
    [
        {"text": "naïve ✓", "cost": 0.000125, "n": [1, None, True]},
        {"big": 2**70},  # orjson refuses: json renders it
        {1: "non-string key"},  # orjson refuses: json renders it as "1"
    ],
)
def test_rendering_matches_json(content: dict[object, object]) -> None:
    expected = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    assert json.loads(_dumps(content)) == json.loads(expected)
    assert _dumps(content).decode("utf-8") == expected


def test_what_json_cannot_render_still_fails() -> None:
    with pytest.raises(TypeError):
        _dumps({"x": object()})
