#!/bin/sh
# Builds dmb and dmb-demo the one way they are built everywhere: the
# Dockerfile runs this script, and so does CI, so a broken image build shows
# up without a Docker engine. Static (CGO off), trimmed, version stamped.
#
#   sh scripts/build.sh [OUTDIR] [VERSION]
set -eu
out=${1:-bin}
version=${2:-dev}
export CGO_ENABLED=0
go build -trimpath -ldflags "-s -w -X main.version=${version}" -o "${out}/dmb" .
go build -trimpath -ldflags "-s -w" -o "${out}/dmb-demo" ./cmd/dmb-demo
