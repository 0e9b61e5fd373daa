# volant guest boot steps, sourced as /lib/volant/boot.sh by the /init of both guest images
# (the test guest's scripts/guest_init.sh and the agent's volant-init.sh). The image builder
# fills in @MODULES@.

# The API filesystems.
volant_mount() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    mkdir -p /dev/pts /run /tmp
    mount -t tmpfs tmpfs /run
    mount -t tmpfs tmpfs /tmp
}

# Debian's cloud kernel builds virtio as modules, so nothing sees eth0 until these are loaded
# (dependencies first; the order was resolved from each module's .modinfo at build time).
volant_load_modules() {
    for mod in @MODULES@; do
        insmod "/lib/modules/$mod.ko" 2>/dev/null || echo "volant-init: insmod $mod failed"
    done
}

# The value of KEY=... on the kernel command line; empty when it is not there.
volant_cmdline() {
    for tok in $(cat /proc/cmdline); do
        case "$tok" in
            "$1"=*) echo "${tok#"$1"=}"; return ;;
        esac
    done
}

# lo, and eth0 as the kernel's ip= argument says (static, or dhcp through udhcpc, which sends
# the VM's name as its hostname so volantd's dnsmasq knows it); sets the hostname from its
# hostname field, "volant" without one; /etc/resolv.conf names volantd's dnsmasq (ip='s dns0,
# else the gateway; dhcp: what the lease says) with volant.domain= as the search domain.
# Leaves $name and $addr set.
volant_network() {
    name=volant
    addr=
    ip link set lo up
    ip_arg=$(volant_cmdline ip)
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
        [ -n "$5" ] && name=$5
        if [ "$ip_arg" = dhcp ] || [ "$7" = dhcp ]; then
            ip link set eth0 up
            VOLANT_DOMAIN=$(volant_cmdline volant.domain) udhcpc -i eth0 -q -n -t 10 \
                -x "hostname:$name" -s /etc/udhcpc.script || echo "volant-init: dhcp failed"
        else
            addr=$1
            ifconfig eth0 "$addr" netmask "${4:-255.255.255.0}" up
            [ -n "$3" ] && route add default gw "$3"
            volant_resolv "${8:-$3}" "$(volant_cmdline volant.domain)"
            # A gratuitous ARP lets a host that is already polling us learn our MAC now, not at
            # its next ARP retransmit (up to a second later).
            arping -U -c 1 -I eth0 "$addr" >/dev/null 2>&1 &
        fi
    fi
    hostname "$name"
}

# /etc/resolv.conf: nameserver $1 (none when empty), search domain $2 (none when empty).
volant_resolv() {
    {
        [ -n "$2" ] && echo "search $2"
        [ -n "$1" ] && echo "nameserver $1"
    } > /etc/resolv.conf
}

# A root shell on the serial console, started again whenever it exits. ttyS0, not /dev/console,
# so that it can be the shell's controlling terminal and Ctrl-C works. The host's serial socket
# is root's; through volantd, reaching it takes the right to manage VMs.
volant_console_shell() {
    (
        while :; do
            HOME=/root PS1='\h:\w# ' setsid -c sh </dev/ttyS0 >/dev/ttyS0 2>&1
            sleep 1
        done
    ) &
}
