#!/bin/sh
# Build the tuf-signer image with podman (or docker) from the repository root.
#   deploy/container/build.sh [--dev] [--hsm-module DIR] [--tag NAME]
# --dev installs SoftHSM (for a dev-init directory mounted at /etc/tuf-signer);
# --hsm-module DIR adds DIR (the HSM vendor's PKCS#11 client) as /opt/hsm in a layer
# on top, for the config's backends.NAME.module.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tag=tuf-signer:latest
softhsm=0
module=
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) softhsm=1; tag=tuf-signer:dev ;;
    --hsm-module) module=$2; shift ;;
    --tag) tag=$2; shift ;;
    *) echo "usage: $0 [--dev] [--hsm-module DIR] [--tag NAME]" >&2; exit 2 ;;
  esac
  shift
done
engine=${CONTAINER_ENGINE:-$(command -v podman || command -v docker || true)}
[ -n "$engine" ] || { echo "$0: needs podman or docker" >&2; exit 1; }
"$engine" build --file "$here/Containerfile" --build-arg "WITH_SOFTHSM=$softhsm" \
  --tag "$tag" "$root"
if [ -n "$module" ]; then
  printf 'FROM %s\nUSER 0:0\nCOPY . /opt/hsm\nUSER 10001:10001\n' "$tag" \
    | "$engine" build --file - --tag "${tag%%:*}-hsm:${tag#*:}" "$module"
fi
