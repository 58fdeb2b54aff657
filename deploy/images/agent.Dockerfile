# GuildNet agent image: code-server (the editor people watch and edit in) + git + the
# guildnet-agent binary, which supervises code-server on :8443, serves /healthz on :8081 and
# runs the task. Build from the repository root:
#
#   docker build -f deploy/images/agent.Dockerfile -t ghcr.io/guildnet/guildnet-agent:0.1.0 .
#
# Add your AI coding CLI in a derived image and point GUILDNET_RUNNER at it (the operator's
# AgentTask spec.env), e.g. GUILDNET_RUNNER="my-ai-cli --task-file -".
# (Not built in this repository's CI: the build machine has no container engine.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p guildnet-bin --bin guildnet-agent \
 && install -m 0755 target/release/guildnet-agent /guildnet-agent

# code-server's image: Debian, user `coder` (uid 1000, matching the operator's
# runAsUser/fsGroup), git and ssh included.
FROM codercom/code-server:4.100.3
COPY --from=build /guildnet-agent /usr/local/bin/guildnet-agent
# The operator sets these too; they are here so the image also works with plain `docker run`.
ENV GUILDNET_CODE_SERVER=/usr/bin/code-server \
    GUILDNET_EDITOR_ADDR=0.0.0.0:8443 \
    GUILDNET_HEALTH_ADDR=0.0.0.0:8081 \
    GUILDNET_WORKSPACE=/home/coder/workspace \
    GUILDNET_STATE_DIR=/home/coder/.guildnet/state
RUN mkdir -p /home/coder/workspace /home/coder/.guildnet/state
USER 1000:1000
WORKDIR /home/coder/workspace
EXPOSE 8443 8081
ENTRYPOINT ["/usr/local/bin/guildnet-agent"]
