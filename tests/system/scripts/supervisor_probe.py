"""Drive a SystemdSupervisor from inside a sysbox, one JSON command per stdin line.

Commands: {"op": "launch", "name", "argv", "cpus", "memory_mb"}, {"op": "kill", "name"},
{"op": "adopt", "name", "pid", "unit"}, {"op": "quit"}. Each gets one reply line ({"ok": ...} or
{"error": ...}); exit callbacks print {"event": "exit", "name", "pid", "status"} lines whenever
they happen. Run with the project's virtualenv python from the project directory.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from volant.host import SystemdSupervisor
from volant.model import ScopeLimits, VolantError


def emit(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def on_exit(name: str, pid: int, status: int | None, stopped: bool) -> None:
    emit({"event": "exit", "name": name, "pid": pid, "status": status, "stopped": stopped})


async def handle(sup: SystemdSupervisor, command: dict[str, Any]) -> dict[str, Any]:
    op = command["op"]
    if op == "launch":
        limits = ScopeLimits(cpus=command["cpus"], memory_mb=command["memory_mb"])
        log_path = Path("/tmp") / f"{command['name']}.log"
        launched = await sup.launch(command["name"], command["argv"], limits, log_path=log_path)
        return {"ok": True, "pid": launched.pid, "unit": launched.unit}
    if op == "kill":
        await sup.kill(command["name"])
        return {"ok": True}
    if op == "adopt":
        adopted = await sup.adopt(command["name"], command["pid"], command["unit"])
        return {"ok": adopted}
    raise ValueError(f"unknown op {op!r}")


async def main() -> None:
    async with SystemdSupervisor() as sup:
        sup.set_exit_callback(on_exit)
        emit({"ok": True, "ready": True})
        while line := await asyncio.to_thread(sys.stdin.readline):
            command = json.loads(line)
            if command["op"] == "quit":
                break
            try:
                emit(await handle(sup, command))
            except VolantError as exc:
                emit({"error": exc.message, "code": exc.code.value})
    emit({"ok": True, "closed": True})


if __name__ == "__main__":
    asyncio.run(main())
