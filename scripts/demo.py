"""`make demo`: boot a real microVM under a real systemd and show it answering.

systemd, volantd.service, the bridge, the tap and the QEMU guest all live in a sysbox (fresh
namespaces over a throw-away overlay of /), so the demo never touches this host's network.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

from scripts.sysbox import Sysbox
from scripts.volantbox import GUEST, ROOT, VENV_BIN, VolantBox


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
        vb.install()
        volar = str(VENV_BIN / "volar")
        show(vb, ["systemctl", "status", "--no-pager", "-n", "3", "volantd"])
        started = time.monotonic()
        show(vb, [volar, "vms", "create", "demo", "--plugin", "hello", "--memory", "256"],
             shown="volar vms create demo --plugin hello --memory 256")  # fmt: skip
        show(vb, [volar, "vms", "list"], shown="volar vms list")
        ip = vb.vm("demo")["ip_address"]
        print(f"\n$ curl http://{ip}:8080/", flush=True)
        print(vb.guest_answer(ip).rstrip(), flush=True)
        print(f"(guest answered {time.monotonic() - started:.1f} s after the create request)")
        show(vb, ["systemctl", "status", "--no-pager", "-n", "0", "volant-vm-demo.scope"])
        show(vb, [volar, "vms", "delete", "demo"], shown="volar vms delete demo")
        show(vb, [volar, "vms", "list"], shown="volar vms list")
    print("\nDemo done; the sandbox is gone.")


if __name__ == "__main__":
    main()
