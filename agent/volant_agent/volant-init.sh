#!/bin/sh
# volant-init: the agent guest's /init (PID 1). The image builder fills in @MODULES@.
# It mounts the API filesystems, loads virtio, configures eth0 from ip=, starts the Python agent,
# reaps orphans, and powers off cleanly on SIGUSR2 (busybox `poweroff`, the agent's
# POST /v1/poweroff, and the ACPI power button through acpid all end up there). PID 1 must never
# exit, or the kernel panics.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp

# Debian's cloud kernel builds virtio as modules; the order (dependencies first) was resolved
# from each module's .modinfo when the image was built.
for mod in @MODULES@; do
    insmod "/lib/modules/$mod.ko" 2>/dev/null || echo "volant-init: insmod $mod failed"
done

name=volant
ip_arg=
for tok in $(cat /proc/cmdline); do
    case "$tok" in
        ip=*) ip_arg="${tok#ip=}" ;;
    esac
done
ip link set lo up

if [ -n "$ip_arg" ]; then
    # The NIC can appear a little after insmod returns.
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    # ip=<client>:<server>:<gw>:<mask>:<hostname>:<device>:<autoconf>
    old_ifs=$IFS
    IFS=:
    set -- $ip_arg
    IFS=$old_ifs
    addr=$1 gw=$3 mask=$4
    [ -n "$5" ] && name=$5
    if [ "$ip_arg" = dhcp ] || [ "$7" = dhcp ]; then
        ip link set eth0 up
        udhcpc -i eth0 -q -n -t 10 -s /etc/udhcpc.script || echo "volant-init: dhcp failed"
    else
        ifconfig eth0 "$addr" netmask "${mask:-255.255.255.0}" up
        [ -n "$gw" ] && route add default gw "$gw"
        # A gratuitous ARP so a host already polling us learns our MAC now.
        arping -U -c 1 -I eth0 "$addr" >/dev/null 2>&1 &
    fi
fi
hostname "$name"

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
