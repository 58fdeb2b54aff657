# GuildNet dashboard image for Docker users (the Helm chart deploy/helm/guildnet runs it next to
# the orchestrator). Without Docker, `scripts/images/build.sh --images dashboard` builds it from
# Debian packages. Build from the repository root:
#
#   docker build -f deploy/images/dashboard.Dockerfile -t ghcr.io/guildnet/guildnet-dashboard:0.1.0 .
#   docker build -f deploy/images/dashboard.Dockerfile --build-arg BASE=registry.internal/debian:bookworm-slim .
#
# BASE needs glibc and libgcc_s (any Debian 12 based image); the binary runs as 65532:65532.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG BASE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p guildnet-bin --bin guildnet-dashboard \
 && install -s -m 0755 target/release/guildnet-dashboard /guildnet-dashboard

FROM ${BASE}
COPY --from=build /guildnet-dashboard /usr/local/bin/guildnet-dashboard
LABEL org.opencontainers.image.title=guildnet-dashboard \
      org.opencontainers.image.description="GuildNet dashboard: web UI over the orchestrator" \
      org.opencontainers.image.licenses=Apache-2.0
USER 65532:65532
ENV GUILDNET_DASHBOARD_LISTEN=0.0.0.0:8090
EXPOSE 8090
ENTRYPOINT ["/usr/local/bin/guildnet-dashboard"]
