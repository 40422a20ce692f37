#!/usr/bin/env bash
# Builds a base for runner's image without a registry: Debian (mmdebstrap, from this
# machine's apt sources), a Python venv on PATH (Debian's pip refuses system installs,
# PEP 668), this machine's CA certificates (pip behind a TLS-inspecting proxy needs them),
# and torch as docker/torch.txt pins it, imported into the local engine as one image.
# Then: runner build SPEC --set image.base=<the name it prints>. Needs root, mmdebstrap and
# a running engine; the wheels come through this machine's pip (its index, mirror or cache).
#
# Usage: scripts/build-base.sh [NAME]
#   NAME      default runner-base:<hash of this script and docker/torch.txt>; an image of
#             that name already in the engine is kept, so a second call takes a second
#   SUITE     the Debian release (default: this machine's, else bookworm); its python3
#             must be one torch ships wheels for
#   SOURCES   an apt sources file for it (default: this machine's, when SUITE is its release;
#             else Debian's mirrors)
#   CA_DIR    locally added CA certificates to trust (default /usr/local/share/ca-certificates)
#   DOCKER    the engine's client (default docker; podman works too)
# Prints NAME on stdout, the rest on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
docker=${DOCKER:-docker}
torch=docker/torch.txt
name=${1:-runner-base:$(cat "$0" "$torch" | sha256sum | cut -c1-12)}
if "$docker" image inspect "$name" >/dev/null 2>&1; then
    echo "$name: already built" >&2
    echo "$name"
    exit 0
fi
here=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
suite=${SUITE:-${here:-bookworm}}
sources=${SOURCES:-}
if [[ -z $sources && $suite == "$here" ]]; then
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        [[ -s $f ]] && { sources=$f; break; }
    done
fi
ca_dir=${CA_DIR:-/usr/local/share/ca-certificates}
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT

# torch's wheels (and their dependencies) first, on this machine, through its own pip
# settings: ~3 GB for x86_64's CUDA build. The base's python is Debian's python3 of $suite.
py=$(case $suite in bookworm) echo 3.11 ;; trixie) echo 3.13 ;; *) echo "" ;; esac)
echo "downloading $(grep -v '^#' "$torch" | xargs) for Python ${py:-of this machine} into $wheels" >&2
python3 -m pip download --quiet --dest "$wheels" --only-binary=:all: ${py:+--python-version "$py"} -r "$torch" >&2

echo "making $name: Debian $suite (mmdebstrap) + /opt/venv + torch" >&2
# Each hook runs on this machine with the new root file system as "$1".
mmdebstrap --variant=minbase --quiet \
    --include=python3,python3-venv,ca-certificates \
    --customize-hook="if [ -d '$ca_dir' ]; then cp -r '$ca_dir/.' \"\$1/usr/local/share/ca-certificates/\"; fi" \
    --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
    --customize-hook='chroot "$1" python3 -m venv /opt/venv' \
    --customize-hook="mkdir \"\$1/tmp/wheels\" && cp '$wheels'/* '$torch' \"\$1/tmp/wheels/\"" \
    --customize-hook='chroot "$1" env -i /opt/venv/bin/pip install --quiet --no-cache-dir --no-index \
        --find-links /tmp/wheels -r /tmp/wheels/torch.txt' \
    --customize-hook='rm -rf "$1/tmp/wheels" "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$suite" - ${sources:+"$sources"} |
    "$docker" import \
        --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --message "scripts/build-base.sh: Debian $suite, /opt/venv, $(grep -v '^#' "$torch" | xargs)" \
        - "$name" >&2
echo "$name"
