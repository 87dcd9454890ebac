# DMB image: a static binary on a minimal, non-root base.
#   docker build --build-arg BUILD=$(git rev-parse --short HEAD) -t dmb .
# dmb -version then says the release in VERSION with the commit.
# For production: tag the image with the release and push it to your registry.
# CI builds the binaries with the same script (scripts/build.sh) and flags.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG BUILD=
RUN sh scripts/build.sh /out "${BUILD}"

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dmb /out/dmb-demo /usr/local/bin/
USER nonroot:nonroot
EXPOSE 8082
# The admin listener stays inside the container unless DMB_ADMIN_ADDR says otherwise.
ENV DMB_ADMIN_ADDR=127.0.0.1:8083
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/dmb", "-healthcheck"]
ENTRYPOINT ["/usr/local/bin/dmb"]
