"""Without polkit on a bus, reads stay open and only root or the daemon's user may change."""

from __future__ import annotations

import os

import pytest

from volant.auth.polkit import Action, Authorizer, ProcessCaller
from volant.model import PermissionDenied

pytestmark = pytest.mark.unit

STRANGER = 54321


async def test_root_and_own_user_may_manage() -> None:
    authorizer = Authorizer(None)
    await authorizer.check(ProcessCaller(pid=1, uid=0, start_time=0), Action.MANAGE_VMS)
    await authorizer.check(ProcessCaller(1, os.geteuid(), 0), Action.MANAGE_VMS)


async def test_others_may_read_but_not_manage() -> None:
    authorizer = Authorizer(None)
    stranger = ProcessCaller(pid=1, uid=STRANGER, start_time=0)
    await authorizer.check(stranger, Action.READ)
    with pytest.raises(PermissionDenied, match=r"com\.volantvm\.volant1\.manage-vms") as info:
        await authorizer.check(stranger, Action.MANAGE_VMS)
    assert "group volant" in info.value.hint
