# GuildNet agent image for Docker users: code-server (the editor people watch and edit in) + git +
# the guildnet-agent binary, which supervises code-server on :8443, serves /healthz on :8081 and
# runs the task. Without Docker, `scripts/images/build.sh` builds the same image from Debian
# packages (mmdebstrap + umoci + skopeo); see docs/KUBERNETES.md. Build from the repository root:
#
#   docker build -f deploy/images/agent.Dockerfile -t ghcr.io/guildnet/guildnet-agent:0.1.0 .
#   docker build -f deploy/images/agent.Dockerfile --build-arg BASE=registry.internal/code-server:4.100.3 .
#
# BASE must provide code-server on PATH, git, and a user with uid 1000 whose home is /home/coder
# (the operator runs the pod as 1000:1000). RUST_IMAGE is the build stage's toolchain image.
# Add your AI coding CLI in a derived image and point GUILDNET_RUNNER at it (the operator's
# AgentTask spec.env), e.g. GUILDNET_RUNNER="my-ai-cli --task-file -".

ARG RUST_IMAGE=rust:1.95-bookworm
ARG BASE=codercom/code-server:4.100.3

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The release profile keeps line tables (debug = 1): install -s strips them (about 170 MB -> 8 MB).
RUN cargo build --release --locked -p guildnet-bin --bin guildnet-agent \
 && install -s -m 0755 target/release/guildnet-agent /guildnet-agent

FROM ${BASE}
COPY --from=build /guildnet-agent /usr/local/bin/guildnet-agent
# The operator sets these too; they are here so the image also works with plain `docker run`.
ENV GUILDNET_CODE_SERVER=code-server \
    GUILDNET_EDITOR_ADDR=0.0.0.0:8443 \
    GUILDNET_HEALTH_ADDR=0.0.0.0:8081 \
    GUILDNET_WORKSPACE=/home/coder/workspace \
    GUILDNET_STATE_DIR=/home/coder/.guildnet/state
LABEL org.opencontainers.image.title=guildnet-agent \
      org.opencontainers.image.description="GuildNet agent: runs one task's coding CLI, ships its log, serves code-server on :8443" \
      org.opencontainers.image.licenses=Apache-2.0
USER 1000:1000
RUN mkdir -p /home/coder/workspace /home/coder/.guildnet/state
WORKDIR /home/coder/workspace
EXPOSE 8443 8081
ENTRYPOINT ["/usr/local/bin/guildnet-agent"]
