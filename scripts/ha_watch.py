"""Websocket bridge to a Home Assistant core, for scripts/ha_check.py (runs in HA's own venv).

Usage: ha_watch.py WS_URL TOKEN EVENT_TYPE...

Authenticates, subscribes to each EVENT_TYPE (e.g. ``state_changed``), then forwards:
every message Home Assistant sends -> one JSON line on stdout; every JSON line on stdin
(a websocket command without ``id``, e.g. ``{"type": "config/entity_registry/list"}``,
plus an optional ``"ref"``) -> Home Assistant, with the result printed as
``{"ref": ..., "result": ...}``. Exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp


async def main(url: str, token: str, event_types: list[str]) -> None:
    out = sys.stdout
    async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=0) as ws:
        assert (await ws.receive_json())["type"] == "auth_required"
        await ws.send_json({"type": "auth", "access_token": token})
        msg = await ws.receive_json()
        if msg["type"] != "auth_ok":
            raise SystemExit(f"websocket auth failed: {msg}")
        next_id = 1
        refs: dict[int, object] = {}
        for et in event_types:
            await ws.send_json({"id": next_id, "type": "subscribe_events", "event_type": et})
            refs[next_id] = f"subscribe:{et}"
            next_id += 1

        async def read_ws() -> None:
            async for m in ws:
                if m.type != aiohttp.WSMsgType.TEXT:
                    break
                d = json.loads(m.data)
                if d.get("type") in ("result", "pong") and d.get("id") in refs:
                    d = {"ref": refs.pop(d["id"], None), "success": d.get("success", True), "result": d.get("result"),
                         "error": d.get("error")}
                out.write(json.dumps(d) + "\n")
                out.flush()

        reader = asyncio.create_task(read_ws())
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            cmd = json.loads(line)
            refs[next_id] = cmd.pop("ref", None)
            await ws.send_json({"id": next_id, **cmd})
            next_id += 1
        reader.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
