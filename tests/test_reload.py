"""Hot reload of the proxy: a request in flight finishes on the routers it started on, new ones get the new config, a
config that does not load leaves the old one serving, and only an admin key may reload."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx

from llm_cascade import Router
from llm_cascade.backends.fake import FakeBackend
from llm_cascade.serve.config import load_config
from llm_cascade.serve.server import create_app

ADMIN, USER = "admin-key", "user-key"


def _config(answer: str) -> str:
    return (
        f'[cascades.c]\n[[cascades.c.tiers]]\nmembers = [{{model = "fake:m", options = {{script = "{answer}"}}}}]\n'
        '[[server.keys]]\nname = "ops"\n'
        f'sha256 = "{hashlib.sha256(ADMIN.encode()).hexdigest()}"\nadmin = true\n'
        '[[server.keys]]\nname = "app"\n'
        f'sha256 = "{hashlib.sha256(USER.encode()).hexdigest()}"\n'
    )


def test_reload_keeps_in_flight_requests_and_refuses_bad_configs(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(_config("old"))
    gate, started = asyncio.Event(), asyncio.Event()

    async def held(_: float) -> None:
        started.set()
        await gate.wait()

    slow = FakeBackend("m", "old", delay=1.0, sleep=held)
    app = create_app(load_config(path), routers={"c": Router([[slow]], retry=None)}, path=path)

    async def go() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            user = {"authorization": f"Bearer {USER}"}
            admin = {"authorization": f"Bearer {ADMIN}"}
            body = {"model": "c", "messages": [{"role": "user", "content": "hi"}]}
            in_flight = asyncio.create_task(client.post("/v1/chat/completions", json=body, headers=user))
            await started.wait()
            assert (await client.post("/admin/reload", headers=user)).status_code == 403
            path.write_text(_config("new"))
            done = await client.post("/admin/reload", headers=admin)
            assert done.status_code == 200 and done.json()["reloaded"] is True
            fresh = await client.post("/v1/chat/completions", json=body, headers=user)
            assert fresh.json()["choices"][0]["message"]["content"] == "new"
            gate.set()
            old = await in_flight
            assert old.status_code == 200 and old.json()["choices"][0]["message"]["content"] == "old"
            path.write_text("[cascades.c]\ntiers = 'not a list'\n")
            bad = await client.post("/admin/reload", headers=admin)
            assert bad.status_code == 422 and "tiers" in bad.json()["error"]
            still = await client.post("/v1/chat/completions", json=body, headers=user)
            assert still.json()["choices"][0]["message"]["content"] == "new"

    asyncio.run(go())
