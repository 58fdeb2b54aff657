# GuildNet operator image for Docker users (deploy/operator.yaml runs it with `run --leader-elect`).
# Without Docker, `scripts/images/build.sh --images operator` builds it from Debian packages
# (mmdebstrap + umoci + skopeo); see docs/KUBERNETES.md. Build from the repository root:
#
#   docker build -f deploy/images/operator.Dockerfile -t ghcr.io/guildnet/guildnet-operator:0.1.0 .
#   docker build -f deploy/images/operator.Dockerfile --build-arg BASE=registry.internal/debian:bookworm-slim .
#
# BASE needs glibc and libgcc_s (any Debian 12 based image); the binary runs as 65532:65532.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG BASE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p guildnet-bin --bin guildnet-operator \
 && install -s -m 0755 target/release/guildnet-operator /guildnet-operator

FROM ${BASE}
COPY --from=build /guildnet-operator /usr/local/bin/guildnet-operator
LABEL org.opencontainers.image.title=guildnet-operator \
      org.opencontainers.image.description="GuildNet operator: reconciles AgentTasks into agent pods" \
      org.opencontainers.image.licenses=Apache-2.0
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/guildnet-operator"]
