#!/bin/sh
# volant test guest /init (packed by scripts/build_guest.py with scripts/guest/boot.sh).
# The kernel runs this as PID 1: it must never exit, or the guest panics.
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH

. /lib/volant/boot.sh
# busybox `poweroff` asks PID 1 with SIGUSR2, as in the agent guest: a clean ACPI power-off.
trap 'sync; poweroff -f' USR2
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

# The test guest always has its console shell, as the console tests expect.
volant_console_shell

# Reap orphans for as long as the guest lives.
while :; do
    sleep 3600 &
    wait
done
