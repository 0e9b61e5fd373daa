#!/bin/sh
# volant test guest /init (packed by scripts/build_guest.py with scripts/guest/boot.sh).
# The kernel runs this as PID 1: it must never exit, or the guest panics.
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH

. /lib/volant/boot.sh
volant_mount
volant_load_modules
volant_network
plugin=$(volant_cmdline volant.plugin)

mkdir -p /www
echo "volant-guest name=$name plugin=$plugin" > /www/index.html
httpd -p 8080 -h /www

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
