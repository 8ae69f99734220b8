# syntax=docker/dockerfile:1
# savepointd: built with the Rust toolchain; the image itself is `FROM scratch` — the binary, the few
# shared libraries it links, the CA bundle and the non-root user 65532 that the Helm chart's
# securityContext expects — so it has no shell and no package manager, and needs no base image to run.
#
#   podman build -t savepointd .                       # builds the release binary in the `build` stage
#   scripts/image-rootfs.sh target/release/savepointd image-rootfs &&
#     podman build --build-arg ROOTFS=context -t savepointd .   # from a binary built on the machine (CI)
ARG ROOTFS=build

FROM rust:1-bookworm AS build
WORKDIR /src
# Only what the build reads, so a change to the chart or the tests does not rebuild the binary.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY scripts/image-rootfs.sh ./scripts/
# The cache mounts keep the crate registry and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && scripts/image-rootfs.sh target/release/savepointd /out

# The same files, gathered on the machine into image-rootfs/ (no image pulled: the build stage is then
# never used).
FROM scratch AS context
COPY image-rootfs/ /out/

FROM ${ROOTFS} AS rootfs

FROM scratch
LABEL org.opencontainers.image.title="savepointd" \
      org.opencontainers.image.description="Scheduled Apache Flink savepoints by application name, with safe retention and Prometheus metrics" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=rootfs /out/ /
USER 65532:65532
# /metrics, /healthz, /readyz (server.listen).
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/savepointd"]
CMD ["run", "--config", "/etc/savepointd/config.yaml"]
