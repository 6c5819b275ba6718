"""Headless Chromium driven over the DevTools protocol: open tabs, run script in them, read their console, close them.

For what `chromium --dump-dom` cannot do: act on a page after it loaded, and close a tab as a user does (pagehide).
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from .harness.tools import require_tool

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


class Chromium:
    """One browser process and one DevTools websocket; tabs are sessions on it."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self.events: list[tuple[str | None, str, dict]] = []  # (session, method, params), in arrival order

    async def __aenter__(self) -> "Chromium":
        self.profile.mkdir(parents=True, exist_ok=True)
        self._log = open(self.profile.parent / f"{self.profile.name}-chromium.log", "wb")
        self.proc = subprocess.Popen([require_tool("chromium"), *FLAGS, f"--user-data-dir={self.profile}",
                                      "--remote-debugging-port=0", "about:blank"],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.exists() and len(active.read_text().split()) >= 2):
            assert self.proc.poll() is None, f"chromium exited: {self.proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.05)
        port, path = active.read_text().split()[:2]
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        self._reader.cancel()
        await self._ws.close()
        await self._http.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    async def _read(self) -> None:
        async for message in self._ws:
            data = message.json()
            if "id" in data and data["id"] in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append((data.get("sessionId"), data["method"], data.get("params", {})))

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        message = {"id": request_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send_json(message)
        answer = await asyncio.wait_for(future, 30)
        assert "error" not in answer, (method, answer["error"])
        return answer["result"]

    async def open(self, url: str, user_agent: str | None = None) -> "Tab":
        """A new tab that has loaded url (its load event fired)."""
        target = (await self.call("Target.createTarget", url="about:blank"))["targetId"]
        session = (await self.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        tab = Tab(self, target, session)
        await tab.call("Page.enable")
        await tab.call("Runtime.enable")
        if user_agent:
            await tab.call("Emulation.setUserAgentOverride", userAgent=user_agent)
        seen = len(self.events)
        await tab.call("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while not any(s == session and m == "Page.loadEventFired" for s, m, _ in self.events[seen:]):
            assert time.monotonic() < deadline, f"{url} did not load"
            await asyncio.sleep(0.05)
        return tab


class Tab:
    def __init__(self, browser: Chromium, target: str, session: str) -> None:
        self.browser, self.target, self.session = browser, target, session

    async def call(self, method: str, **params: Any) -> dict:
        return await self.browser.call(method, self.session, **params)

    async def run(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (awaiting a promise) and return its value; a thrown error fails the test."""
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def console(self, kind: str = "warning") -> list[str]:
        """What the page wrote to its console with console.<kind> (warning: console.warn), each call one string."""
        return [" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
                for session, method, params in self.browser.events
                if session == self.session and method == "Runtime.consoleAPICalled" and params["type"] == kind]

    def exceptions(self) -> list[dict]:
        """Uncaught exceptions in the page."""
        return [params for session, method, params in self.browser.events
                if session == self.session and method == "Runtime.exceptionThrown"]

    async def close(self) -> None:
        """Close the tab as a user does: the page is hidden and unloaded (pagehide), then gone."""
        await self.browser.call("Target.closeTarget", targetId=self.target)
