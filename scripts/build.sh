#!/bin/sh
# Builds dmb and dmb-demo the one way they are built everywhere: the
# Dockerfile runs this script, and so does CI, so a broken image build shows
# up without a Docker engine. Static (CGO off), trimmed, version stamped:
# the release in VERSION, with BUILD (a commit, say) as build metadata.
#
#   sh scripts/build.sh [OUTDIR] [BUILD]      # dmb -version: 1.0.0+BUILD
set -eu
cd "$(dirname "$0")/.."
out=${1:-bin}
version=$(cat VERSION)
if [ -n "${2:-}" ] && [ "${2:-}" != "dev" ]; then
  version="${version}+$2"
fi
export CGO_ENABLED=0
go build -trimpath -ldflags "-s -w -X main.version=${version}" -o "${out}/dmb" .
go build -trimpath -ldflags "-s -w" -o "${out}/dmb-demo" ./cmd/dmb-demo
