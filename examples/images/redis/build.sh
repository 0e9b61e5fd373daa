#!/bin/sh
# Build an OCI image of Redis from Debian packages alone: no base image from a registry.
#
#   examples/images/redis/build.sh OUT [SUITE]
#
# OUT becomes an OCI image layout with the tag "latest" (SUITE defaults to bookworm). Import it
# with `oci:OUT:latest`, or push it to a registry with `skopeo copy oci:OUT:latest docker://…`.
# Needs root, mmdebstrap and umoci (Debian packages of those names).
#
# Layer 1 is a minimal Debian (the Essential packages) plus redis-server, as mmdebstrap makes
# it; the package's postinst adds the user redis. Layer 2 makes /data, owned by redis, where a
# volume goes. The image runs redis-server in the foreground as redis on port 6379, with an
# append-only file in /data that is synced on every write.
set -eu

out=$1
suite=${2:-bookworm}
# Reproducible package timestamps (mmdebstrap honours it); any fixed date will do.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mmdebstrap --quiet --variant=essential --include=redis-server \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
	"$suite" "$work/base.tar"

image="$work/oci:latest"
umoci init --layout "$work/oci"
umoci new --image "$image"
umoci raw add-layer --image "$image" "$work/base.tar" --history.created_by "mmdebstrap $suite redis-server"

umoci unpack --image "$image" "$work/bundle"
root="$work/bundle/rootfs"
install -d -m 0750 -o "$(chroot "$root" id -u redis)" -g "$(chroot "$root" id -g redis)" "$root/data"
umoci repack --image "$image" "$work/bundle" --history.created_by "data directory for volant"

umoci config --image "$image" \
	--config.entrypoint=/usr/bin/redis-server \
	--config.cmd=--bind --config.cmd=0.0.0.0 --config.cmd=--protected-mode --config.cmd=no \
	--config.cmd=--dir --config.cmd=/data --config.cmd=--appendonly --config.cmd=yes \
	--config.cmd=--appendfsync --config.cmd=always \
	--config.user=redis --config.workingdir=/data \
	--config.env=PATH=/usr/sbin:/usr/bin:/sbin:/bin \
	--config.exposedports=6379/tcp --config.volume=/data \
	--created "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
umoci gc --layout "$work/oci"

rm -rf "$out"
mv "$work/oci" "$out"
