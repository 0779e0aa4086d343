#!/usr/bin/env bash
# Make a stand-in base image from Debian packages, for sites that cannot pull the public bases (air-gapped
# clusters, CI machines with no registry access). It holds Debian bookworm's Python 3.11 (the version of
# python:3.11-slim-bookworm) with venv and pip, and this machine's CA bundle, so that pip inside a build
# trusts a TLS-inspecting proxy.
#   docker/local-base.sh                          -> localhost/kfp-distill-base:bookworm
#   docker/local-base.sh registry.local/py:3.11   any name; then build with BASE_IMAGE=that name
# Needs mmdebstrap and buildah (apt-get install mmdebstrap buildah); runs unprivileged with
# STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot. Other engines load the result with
# `buildah push NAME docker-archive:base.tar` and `docker load < base.tar`.
set -euo pipefail

NAME=${1:-localhost/kfp-distill-base:bookworm}
SUITE=${SUITE:-bookworm}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,python-is-python3 \
    "$SUITE" "$work/rootfs.tar"

container=$(buildah from scratch)
trap 'buildah rm "$container" >/dev/null; rm -rf "$work"' EXIT
buildah add "$container" "$work/rootfs.tar" /
# Debian marks its Python as managed by apt; the images install into their own venv, and this lets the
# base's pip work too.
buildah run "$container" -- sh -c 'rm -f /usr/lib/python3*/EXTERNALLY-MANAGED'
if [ -f "$CA_BUNDLE" ]; then
    buildah copy "$container" "$CA_BUNDLE" /etc/ssl/certs/ca-certificates.crt
fi
buildah config --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    --env REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    --label org.opencontainers.image.title=kfp-distill-base \
    --label org.opencontainers.image.description="Debian $SUITE, python3 with venv and pip" \
    "$container"
buildah commit --quiet "$container" "$NAME" >/dev/null
echo "$NAME"
