# GuildNet orchestrator image for Docker users (deploy/orchestrator/ runs 2+ replicas of it on
# one PostgreSQL). `scripts/images/build.sh --images orchestrator` builds it without Docker. Build from the
# repository root:
#
#   docker build -f deploy/images/orchestrator.Dockerfile -t ghcr.io/guildnet/guildnet-orchestrator:0.1.0 .
#   docker build -f deploy/images/orchestrator.Dockerfile --build-arg BASE=registry.internal/debian:bookworm-slim .
#
# BASE needs glibc and libgcc_s (any Debian 12 based image); the binary runs as 65532:65532.
# tailscaled (the tailscale CLI linked in, `tailscale` a symlink) is for the mesh set at run time
# (PUT /mesh, docs/MESH.md): built as scripts/images/build.sh builds it (the same version, the
# testbed's TAILSCALE_VERSION, and the same build tags; keep them in step). Not built by any
# test here (no Docker): scripts/images/build.sh is the tested path.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE=gcr.io/distroless/cc-debian12:nonroot

FROM ${GO_IMAGE} AS tailscale
ARG TAILSCALE_VERSION=v1.98.10
ARG TAILSCALE_TAGS=ts_include_cli,ts_omit_aws,ts_omit_bird,ts_omit_tap,ts_omit_kube,ts_omit_ssh,ts_omit_drive,ts_omit_taildrop,ts_omit_webclient,ts_omit_systray,ts_omit_synology,ts_omit_networkmanager,ts_omit_dbus,ts_omit_resolved,ts_omit_clientupdate,ts_omit_capture,ts_omit_wakeonlan,ts_omit_tpm,ts_omit_relayserver,ts_omit_desktop_sessions,ts_omit_completion_scripts,ts_omit_completion,ts_omit_qrcodes,ts_omit_advertiseexitnode,ts_omit_appconnectors,ts_omit_serve,ts_omit_posture,ts_omit_doctor,ts_omit_netlog,ts_omit_linkspeed,ts_omit_tundevstats,ts_omit_osrouter,ts_omit_iptables,ts_omit_webbrowser
RUN short="${TAILSCALE_VERSION#v}" \
 && GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOBIN=/out \
    go install -trimpath -tags "$TAILSCALE_TAGS" \
      -ldflags "-s -w -X tailscale.com/version.shortStamp=$short -X tailscale.com/version.longStamp=$short-guildnet" \
      "tailscale.com/cmd/tailscaled@$TAILSCALE_VERSION" \
 && mkdir -p /rootfs/usr/local/bin /rootfs/usr/share/doc/tailscale \
 && mv /out/tailscaled /rootfs/usr/local/bin/ && ln -s tailscaled /rootfs/usr/local/bin/tailscale \
 && cp "$(go env GOMODCACHE)/tailscale.com@$TAILSCALE_VERSION/LICENSE" /rootfs/usr/share/doc/tailscale/copyright \
 && cp "$(go env GOMODCACHE)/tailscale.com@$TAILSCALE_VERSION/PATENTS" /rootfs/usr/share/doc/tailscale/PATENTS

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p guildnet-bin --bin guildnet-orchestrator \
 && install -s -m 0755 target/release/guildnet-orchestrator /guildnet-orchestrator

FROM ${BASE}
COPY --from=build /guildnet-orchestrator /usr/local/bin/guildnet-orchestrator
COPY --from=tailscale /rootfs/ /
LABEL org.opencontainers.image.title=guildnet-orchestrator \
      org.opencontainers.image.description="GuildNet orchestrator: control plane: API, scheduling, agent protocol; tailscaled for PUT /mesh" \
      org.opencontainers.image.licenses=Apache-2.0
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/guildnet-orchestrator"]
