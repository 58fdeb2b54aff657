# GuildNet operator image (deploy/operator.yaml runs it with `run --leader-elect`). Build from
# the repository root:
#
#   docker build -f deploy/images/operator.Dockerfile -t ghcr.io/guildnet/guildnet-operator:0.1.0 .
#
# (Not built in this repository's CI: the build machine has no container engine.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p guildnet-bin --bin guildnet-operator \
 && install -m 0755 target/release/guildnet-operator /guildnet-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /guildnet-operator /usr/local/bin/guildnet-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/guildnet-operator"]
