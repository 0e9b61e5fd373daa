"""`make demo`: install the signed example plugin, boot its workload in a real microVM under a
real systemd, call it, show its logs, delete it.

systemd, volantd.service, the bridge, the tap and the QEMU guest all live in a sysbox (fresh
namespaces over a throw-away overlay of /), so the demo never touches this host's network. The
host requires signed plugins and trusts the example key (examples/keys/).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

from scripts.sysbox import Sysbox
from scripts.volantbox import API, GUEST, ROOT, VENV_BIN, VolantBox

HELLO = ROOT / "examples" / "plugins" / "hello" / "manifest.json"
SETTINGS = {
    "runtime.initramfs": str(GUEST / "agent-initramfs.img"),
    "plugins.require_signature": True,
    "plugins.trusted_keys_dir": str(ROOT / "examples" / "keys"),
}


def show(vb: VolantBox, argv: list[str], *, shown: str = "") -> str:
    print(f"\n$ {shown or shlex.join(argv)}", flush=True)
    proc = vb.run(*argv)
    out = str(proc.stdout) + str(proc.stderr)
    print(out.rstrip(), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"demo: {shlex.join(argv)} failed with {proc.returncode}")
    return out


def main() -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/build_guest.py"), "--out", str(GUEST)], check=True
    )
    print("Booting systemd in a sandbox (own namespaces, tmpfs overlay of /)...", flush=True)
    with Sysbox() as box:
        vb = VolantBox(box)
        vb.install(SETTINGS, plugins=())
        volar = str(VENV_BIN / "volar")

        def cli(*argv: str) -> str:
            return show(vb, [volar, *argv], shown=shlex.join(["volar", *argv]))

        show(vb, ["systemctl", "status", "--no-pager", "-n", "3", "volantd"])
        show(vb, [volar, "plugins", "install", str(HELLO)],
             shown=f"volar plugins install {HELLO.relative_to(ROOT)}")  # fmt: skip
        cli("plugins", "list")
        started = time.monotonic()
        cli("vms", "create", "web", "--plugin", "hello")
        print("(waiting for the agent to report the workload healthy...)", flush=True)
        vb.wait_status("web", "running", timeout=180)
        print(f"(running {time.monotonic() - started:.1f} s after the create request)")
        cli("vms", "list")
        cli("vms", "action", "web", "greet")
        # A command in the workload's root, and a file copied out of it.
        cli("vms", "exec", "web", "--", "ls", "-l", "/opt/volant/plugins/hello")
        cli("vms", "cp", "web:/opt/volant/plugins/hello/app.py", "/tmp/hello-app.py")
        show(vb, ["head", "-n", "3", "/tmp/hello-app.py"])
        # The operations of the workload's OpenAPI document, one called through the passthrough.
        cli("vms", "operations", "web")
        cli("vms", "call", "web", "GET:/greet")
        show(vb, ["curl", "-sS", "-X", "POST", "--data", '{"hello": "volant"}',
                  f"{API}/api/v1/vms/web/actions/echo"])  # fmt: skip
        cli("vms", "logs", "web")
        show(vb, ["systemctl", "status", "--no-pager", "-n", "0", "volant-vm-web.scope"])
        cli("vms", "delete", "web")
        cli("plugins", "remove", "hello")
        cli("vms", "list")
    print("\nDemo done; the sandbox is gone.")


if __name__ == "__main__":
    main()
