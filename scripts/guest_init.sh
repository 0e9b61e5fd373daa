#!/bin/sh
# volant test guest /init (packed by scripts/build_guest.py; @MODULES@ is filled in at build time).
# The kernel runs this as PID 1: it must never exit, or the guest panics.
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp

# Debian's cloud kernel builds virtio as modules, so nothing sees eth0 until these are loaded
# (dependencies first; the order was resolved from each module's .modinfo at build time).
for mod in @MODULES@; do
    insmod "/lib/modules/$mod.ko" 2>/dev/null || echo "volant-init: insmod $mod failed"
done

name=volant
plugin=
ip_arg=
for tok in $(cat /proc/cmdline); do
    case "$tok" in
        ip=*) ip_arg="${tok#ip=}" ;;
        volant.plugin=*) plugin="${tok#volant.plugin=}" ;;
    esac
done

# The network device can appear a little after insmod returns.
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do
    sleep 0.1
    i=$((i + 1))
done
ip link set lo up

if [ -n "$ip_arg" ]; then
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
    fi
fi
hostname "$name"

mkdir -p /www
echo "volant-guest name=$name plugin=$plugin" > /www/index.html
httpd -p 8080 -h /www
# A gratuitous ARP lets a host that is already polling us learn our MAC now, not at its next
# ARP retransmit (up to a second later).
[ -n "$addr" ] && arping -U -c 1 -I eth0 "$addr" >/dev/null 2>&1 &

# The ACPI power button (QEMU system_powerdown, Cloud Hypervisor vm.power-button) arrives as an
# input event from the button driver; acpid turns it into a clean poweroff.
acpid -c /etc/acpi -a /etc/acpid.conf -l /run/acpid.log

echo "volant-init: ready name=$name plugin=$plugin"

# A root shell on the serial console, as `volar vms console` expects to find (only root on the
# host reaches the serial socket). ttyS0, not /dev/console, so that it can be the shell's
# controlling terminal and Ctrl-C works; started again when it exits.
(
    while :; do
        HOME=/root PS1='\h:\w# ' setsid -c sh </dev/ttyS0 >/dev/ttyS0 2>&1
        sleep 1
    done
) &

# Reap orphans for as long as the guest lives.
while :; do
    sleep 3600 &
    wait
done
