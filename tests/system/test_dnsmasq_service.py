"""volantd's dnsmasq under a real systemd: the transient service volant-dnsmasq.service in
volant.slice, a dhcp-mode busybox guest served by it, its lease released from inside
volantd.service's sandbox (CAP_NET_ADMIN only), and the service adopted over a volantd
restart."""

from __future__ import annotations

import time

import pytest

from scripts.volantbox import VolantBox
from tests.system.hostcheck import orphans

pytestmark = pytest.mark.system

UNIT = "volant-dnsmasq.service"
LEASES = "/var/lib/volant/dnsmasq.leases"


def main_pid(vb: VolantBox) -> str:
    return vb.scope_show(UNIT, "MainPID")["MainPID"]


def test_dnsmasq_is_a_transient_service_that_serves_and_releases_dhcp_leases(
    volantd: VolantBox,
) -> None:
    props = volantd.scope_show(UNIT, "ActiveState", "Slice", "Transient", "CapabilityBoundingSet")
    assert props["ActiveState"] == "active", volantd.journal(UNIT)
    assert (props["Slice"], props["Transient"]) == ("volant.slice", "yes")
    assert props["CapabilityBoundingSet"].split() == [
        "cap_net_bind_service",
        "cap_net_admin",
        "cap_net_raw",
    ]
    volantd.install_test_plugin("dhcpdemo", network={"mode": "dhcp"})
    reply = volantd.api("POST", "/api/v1/vms", {"name": "dh", "plugin": "dhcpdemo"})
    assert reply.status == 201, reply
    deadline = time.monotonic() + 120
    while not (vm := volantd.vm("dh"))["ip_address"]:
        assert time.monotonic() < deadline, volantd.journal(UNIT)
        time.sleep(0.5)
    assert "volant-guest name=dh" in volantd.guest_answer(vm["ip_address"])
    assert vm["mac_address"] in volantd.sh(f"cat {LEASES}")
    assert orphans(volantd, volantd.api("GET", "/api/v1/vms").body["vms"]) == []

    # systemd starts it again after a crash.
    crashed = main_pid(volantd)
    volantd.sh(f"systemctl kill --signal=SIGKILL {UNIT}")
    deadline = time.monotonic() + 30
    while main_pid(volantd) in ("0", crashed):
        assert time.monotonic() < deadline, volantd.journal(UNIT)
        time.sleep(0.2)
    pid = main_pid(volantd)
    volantd.sh("systemctl restart volantd")
    volantd.wait_healthy()
    assert main_pid(volantd) == pid  # adopted, not restarted
    assert "dnsmasq: adopted the running one" in volantd.journal()

    assert volantd.api("DELETE", "/api/v1/vms/dh").status == 204
    assert vm["mac_address"] not in volantd.sh(f"cat {LEASES}")
    assert orphans(volantd, []) == []
