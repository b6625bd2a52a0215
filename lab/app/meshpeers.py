#!/usr/bin/env python3
"""Mesh-peer simulator for the P3 lab (lab only).

Keeps P3LAB_PEERS (default 12) websocket peers connected to the lab app's
/mesh/ws.  A peer that is dropped or refused (e.g. 503 while the relay is down)
tries again every 0.5 s.  Each connected peer sends a tiny JSON message every
20-40 s and reads whatever the relay forwards.  One log line per change of the
connected count (coalesced over 1 s), not per attempt.

Target: P3_MESH_URL (ws://host:port/mesh/ws), else P3_APP_URL (http://host:port),
else ws://127.0.0.1:$PORT/mesh/ws.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import sys
import time

import aiohttp

log = logging.getLogger("meshpeers")
RETRY_DELAY = 0.5


def target_url(env=os.environ) -> str:
    if env.get("P3_MESH_URL"):
        return env["P3_MESH_URL"]
    if env.get("P3_APP_URL"):
        base = env["P3_APP_URL"].rstrip("/")
        if base.startswith("https://"):
            base = "wss://" + base[len("https://"):]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://"):]
        return base + "/mesh/ws"
    return f"ws://127.0.0.1:{env.get('PORT', '5000')}/mesh/ws"


class State:
    def __init__(self, total: int):
        self.total = total
        self.connected: set[int] = set()
        self.last_reason: str | None = None
        self.changed = asyncio.Event()

    def up(self, i: int):
        if i not in self.connected:
            self.connected.add(i)
            self.changed.set()

    def down(self, i: int, reason: str):
        self.last_reason = reason
        if i in self.connected:
            self.connected.discard(i)
            self.changed.set()

    async def reporter(self):
        reported = None
        while True:
            await self.changed.wait()
            await asyncio.sleep(1.0)           # coalesce a burst of changes into one line
            self.changed.clear()
            n = len(self.connected)
            if n != reported:
                extra = "" if n == self.total or not self.last_reason else f" (last: {self.last_reason})"
                log.info("peers connected %d/%d%s", n, self.total, extra)
                reported = n


async def peer(i: int, url: str, session: aiohttp.ClientSession, state: State):
    await asyncio.sleep(random.uniform(0, 0.5))          # no thundering herd at start
    while True:
        try:
            async with session.ws_connect(url, heartbeat=30, autoping=True,
                                          timeout=aiohttp.ClientWSTimeout(ws_close=2)) as ws:
                state.up(i)
                next_send = time.monotonic() + random.uniform(5, 30)
                seq = 0
                while True:
                    wait = max(next_send - time.monotonic(), 0.01)
                    try:
                        msg = await ws.receive(timeout=wait)
                    except asyncio.TimeoutError:
                        seq += 1
                        await ws.send_str(json.dumps({"type": "hello", "peer": i, "seq": seq}))
                        next_send = time.monotonic() + random.uniform(20, 40)
                        continue
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                    aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        reason = f"closed by app (code {ws.close_code})"
                        break
            state.down(i, reason)
        except asyncio.CancelledError:
            raise
        except aiohttp.WSServerHandshakeError as e:
            state.down(i, f"refused (HTTP {e.status})")
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            state.down(i, f"{type(e).__name__}: {e}"[:200])
        await asyncio.sleep(RETRY_DELAY)


async def main():
    n = int(os.environ.get("P3LAB_PEERS", "12"))
    url = target_url()
    log.info("keeping %d peers on %s", n, url)
    state = State(n)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    timeout = aiohttp.ClientTimeout(total=None, connect=2, sock_connect=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = [asyncio.create_task(peer(i, url, session, state)) for i in range(n)]
        tasks.append(asyncio.create_task(state.reporter()))
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    log.info("stopped")


if __name__ == "__main__":
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
                                           "%Y-%m-%dT%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    asyncio.run(main())
