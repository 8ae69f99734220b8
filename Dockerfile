# syntax=docker/dockerfile:1
# savepointd: build with the Rust toolchain, run on distroless (glibc, CA certificates, no shell) as
# the non-root user 65532 that the Helm chart's securityContext expects.

FROM rust:1-bookworm AS build
WORKDIR /src
# Only what the build reads, so a change to the chart or the tests does not rebuild the binary.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The cache mounts keep the crate registry and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -D -m 0755 target/release/savepointd /out/savepointd

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="savepointd" \
      org.opencontainers.image.description="Scheduled Apache Flink savepoints by application name, with safe retention and Prometheus metrics" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/savepointd /usr/local/bin/savepointd
USER 65532:65532
# /metrics, /healthz, /readyz (server.listen).
EXPOSE 9090
ENTRYPOINT ["savepointd"]
CMD ["run", "--config", "/etc/savepointd/config.yaml"]
