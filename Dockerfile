# syntax=docker/dockerfile:1
#
# bgsched in a container: `docker build -t bgsched .`, then for example
#   docker run -v $PWD/jobs.toml:/etc/bgsched/jobs.toml:ro bgsched            # standalone
#   docker run ... -e BGSCHED_ETCD_ENDPOINTS=http://etcd:2379 bgsched run --watch-config
#   docker run -v $PWD/jobs.toml:/etc/bgsched/jobs.toml:ro bgsched check      # any command
# The entrypoint is the binary; the default command is `run`.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# etcd-client's build script needs protoc. .cargo/config.toml points PROTOC at
# scripts/protoc, which falls back to the copy that the protoc-bin-vendored
# build-dependency unpacks into cargo's registry, so the builder needs no
# protobuf-compiler package; both files must therefore be in the context.
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo .cargo
COPY scripts/protoc scripts/protoc
COPY src src
# Cargo's registry and target directory are cache mounts, so a rebuild after
# a source change does not recompile every dependency; the binary is copied
# out of the mount because the mount is gone after this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin bgsched \
    && install -D -m 0755 target/release/bgsched /out/bgsched

FROM debian:${DEBIAN_RELEASE}-slim
# tini runs as PID 1: it forwards SIGTERM to bgsched (which drains its jobs,
# see README "Signals") and reaps orphans, which bgsched as PID 1 would not.
# ca-certificates: https etcd endpoints without a ca_file use the system roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*
# A fixed uid, so that Kubernetes' runAsNonRoot can check it
# (deploy/kubernetes/deployment.yaml runs as the same uid).
RUN groupadd --system --gid 10001 bgsched \
    && useradd --system --uid 10001 --gid bgsched --home-dir /var/lib/bgsched \
        --create-home --shell /usr/sbin/nologin bgsched
COPY --from=builder /out/bgsched /usr/local/bin/bgsched
USER 10001:10001
WORKDIR /var/lib/bgsched
# The state directory only matters standalone; in a cluster state is in etcd.
# BGSCHED_HTTP: `run` serves /healthz (and /metrics, ...) for the HEALTHCHECK
# below whatever arguments it is given.
ENV BGSCHED_CONFIG=/etc/bgsched/jobs.toml \
    BGSCHED_STATE_DIR=/var/lib/bgsched \
    BGSCHED_HTTP=0.0.0.0:9187
# Standalone state (history, leader lock) outlives the container.
VOLUME ["/var/lib/bgsched"]
EXPOSE 9187
# The image has no curl: bash's /dev/tcp asks /healthz on the port of
# $BGSCHED_HTTP and wants a 200 (503 when the scheduler loop is stalled).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${BGSCHED_HTTP##*:} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 && [ \"$code\" = 200 ]"]
# The binary, so that `docker run IMAGE check` (or list, history, ...) works;
# `run` by default.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/bgsched"]
CMD ["run"]
