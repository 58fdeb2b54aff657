# GuildNet orchestrator image for Docker users (deploy/orchestrator/ runs 2+ replicas of it on
# one PostgreSQL). `scripts/images/build.sh --images orchestrator` builds it without Docker. Build from the
# repository root:
#
#   docker build -f deploy/images/orchestrator.Dockerfile -t ghcr.io/guildnet/guildnet-orchestrator:0.1.0 .
#   docker build -f deploy/images/orchestrator.Dockerfile --build-arg BASE=registry.internal/debian:bookworm-slim .
#
# BASE needs glibc and libgcc_s (any Debian 12 based image); the binary runs as 65532:65532.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG BASE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p guildnet-bin --bin guildnet-orchestrator \
 && install -s -m 0755 target/release/guildnet-orchestrator /guildnet-orchestrator

FROM ${BASE}
COPY --from=build /guildnet-orchestrator /usr/local/bin/guildnet-orchestrator
LABEL org.opencontainers.image.title=guildnet-orchestrator \
      org.opencontainers.image.description="GuildNet operator: control plane: API, scheduling, agent protocol" \
      org.opencontainers.image.licenses=Apache-2.0
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/guildnet-orchestrator"]
