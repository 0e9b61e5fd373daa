"""`volar system status|info`: lines for people, the daemon's JSON for scripts."""

from __future__ import annotations

import json

import pytest

from tests.unit.run_volar import volar
from tests.unit.volantd_standin import INFO, STATUS, StandIn
from volant.cli.system import duration, size

pytestmark = pytest.mark.unit


def test_status(standin: tuple[StandIn, str]) -> None:
    _daemon, api = standin
    assert volar("--api", api, "system", "status") == (
        0,
        "volantd: 0.1.0, supervisor process, hypervisor qemu\n"
        "VMs:     3 (2 running, 1 stopped)\n"
        "usage:   CPU 12.3 s, memory -, VM disks -\n"
        "IP pool: 3 of 253 leased in 192.168.127.0/24\n"
        "host:    2 CPUs, 14.2% busy, load 0.50 0.25 0.12\n"
        "memory:  1.5 GiB available of 4.0 GiB\n"
        "up:      2 d 3 h\n"
        "events:  1 subscriber\n",
        "",
    )
    code, out, err = volar("--api", api, "system", "status", "--json")
    assert (code, json.loads(out), err) == (0, STATUS, "")


def test_info(standin: tuple[StandIn, str]) -> None:
    _daemon, api = standin
    assert volar("--api", api, "system", "info") == (
        0,
        "version:    0.1.0 (API v1)\n"
        "host:       box, Linux 6.1.0-31-cloud-amd64\n"
        "supervisor: process\n"
        "hypervisor: qemu (accel tcg)\n"
        "state:      /var/lib/volant\n"
        "network:    bridge vbr0, 192.168.127.0/24, host 192.168.127.1\n"
        "signatures: checked if present\n"
        "API key:    required over TCP\n",
        "",
    )
    code, out, err = volar("--api", api, "system", "info", "--json")
    assert (code, json.loads(out), err) == (0, INFO, "")


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (200 * 1024**2, "200 MiB"),
        (5 * 1024**5, "5120 TiB"),
    ],
)
def test_size(n: int, text: str) -> None:
    assert size(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0 s"), (42.9, "42 s"), (3725, "1 h 2 min"), (90061, "1 d 1 h")]
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text
