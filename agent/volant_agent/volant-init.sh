#!/bin/sh
# volant-init: the agent guest's /init (PID 1).
# It mounts the API filesystems, loads virtio, configures eth0 from ip=, starts the Python agent,
# reaps orphans, and powers off cleanly on SIGUSR2 (busybox `poweroff`, the agent's
# POST /v1/poweroff, and the ACPI power button through acpid all end up there). PID 1 must never
# exit, or the kernel panics.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

# The steps both guest images share (scripts/guest/boot.sh).
. /lib/volant/boot.sh
volant_mount
volant_load_modules
volant_network

agent_pid=
start_agent() {
    # The launch time (seconds since boot) lets /v1/status show where boot time goes.
    VOLANT_AGENT_LAUNCHED=$(cut -d' ' -f1 /proc/uptime) \
        PYTHONPATH=/usr/lib/volant-agent PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
        HOME=/root python3 -m volant_agent </dev/null &
    agent_pid=$!
}

power_off() {
    echo "volant-init: powering off"
    if [ -n "$agent_pid" ]; then
        # The agent stops the workload (SIGTERM, then SIGKILL after its grace); this bounds it.
        kill -TERM "$agent_pid" 2>/dev/null
        (sleep 12; kill -KILL "$agent_pid" 2>/dev/null) &
        wait "$agent_pid"
    fi
    sync
    poweroff -f
}
trap power_off USR2 TERM

# The ACPI power button (QEMU system_powerdown, Cloud Hypervisor vm.power-button) reaches acpid
# through the button driver; its handler signals us.
acpid -c /etc/acpi -a /etc/acpid.conf -l /run/acpid.log

start_agent
# Only when volantd's runtime.console_shell asked for it: otherwise the console shows output and
# takes no input.
if [ "$(volant_cmdline volant.shell)" = 1 ]; then
    volant_console_shell
fi
echo "volant-init: ready name=$name agent=$agent_pid"

# `wait` reaps every child, orphans reparented to PID 1 included; it returns early when a
# trapped signal arrives, which power_off handles without coming back.
while :; do
    wait "$agent_pid"
    rc=$?
    if kill -0 "$agent_pid" 2>/dev/null; then
        continue
    fi
    echo "volant-init: agent exited with status $rc; restarting it in 1s"
    sleep 1
    start_agent
done
