#!/bin/sh
# Build an OCI image of nginx from Debian packages alone: no base image from a registry.
#
#   examples/images/nginx/build.sh OUT [SUITE]
#
# OUT becomes an OCI image layout with the tag "latest" (SUITE defaults to bookworm). Import it
# with `oci:OUT:latest`, or push it to a registry with `skopeo copy oci:OUT:latest docker://…`.
# Needs root, mmdebstrap and umoci (Debian packages of those names).
#
# Layer 1 is a minimal Debian (the Essential packages) plus nginx, as mmdebstrap makes it.
# Layer 2 is the site: an nginx.conf for running unprivileged, a page, and the package's
# default site removed, which umoci records as a whiteout. The image runs nginx in the
# foreground as www-data on port 80 (8080 is the Volant guest agent's).
set -eu

out=$1
suite=${2:-bookworm}
here=$(cd "$(dirname "$0")" && pwd)
# Reproducible package timestamps (mmdebstrap honours it); any fixed date will do.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mmdebstrap --quiet --variant=essential --include=nginx \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
	"$suite" "$work/base.tar"

image="$work/oci:latest"
umoci init --layout "$work/oci"
umoci new --image "$image"
umoci raw add-layer --image "$image" "$work/base.tar" --history.created_by "mmdebstrap $suite nginx"

umoci unpack --image "$image" "$work/bundle"
root="$work/bundle/rootfs"
rm "$root/etc/nginx/sites-enabled/default"
install -m 0644 "$here/nginx.conf" "$root/etc/nginx/nginx.conf"
install -d -m 0755 "$root/var/www/site"
install -m 0644 "$here/index.html" "$root/var/www/site/index.html"
umoci repack --image "$image" "$work/bundle" --history.created_by "site for volant"

umoci config --image "$image" \
	--config.entrypoint=/usr/sbin/nginx \
	--config.cmd=-e --config.cmd=stderr --config.cmd=-g --config.cmd='daemon off;' \
	--config.user=www-data --config.workingdir=/var/www/site \
	--config.env=PATH=/usr/sbin:/usr/bin:/sbin:/bin \
	--config.exposedports=80/tcp \
	--created "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
umoci gc --layout "$work/oci"

rm -rf "$out"
mv "$work/oci" "$out"
