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


def test_health_reports_the_audit_when_configured(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[cascades.c]\n[[cascades.c.tiers]]\nmembers = [{model = "fake:m", options = {script = "yes"}}]\n'
        f"[ledger]\nurl = {str(tmp_path / 'l.sqlite3')!r}\njournal = {str(tmp_path / 'j')!r}\n"
        '[shadow]\nrate = 1.0\npool = ["fake:m", {model = "fake:ref", options = {script = "no"}}]\n'
        '[audit]\nreference = "fake:ref"\nmin_fidelity = 0.9\nevery_s = 0\n'
    )
    app = create_app(load_config(path), path=path)

    async def go() -> dict[str, object]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            body = {"model": "c", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(20):
                assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
            router = app.state.proxy.routers["c"]
            await router.shadow.drain()
            health: dict[str, object] = (await client.get("/health")).json()
            await router.aclose()
            return health

    health = asyncio.run(go())
    app.state.proxy.components.close()
    audit = health["audit"]
    assert isinstance(audit, dict)
    assert audit["requests"] == 20 and audit["fidelity"] == 0.0 and audit["below"] is True
    assert health["status"] == "degraded"
