# Multi-stage build: compile spillway, ship it on a slim Debian base. The `dist` profile is
# release without symbols or line tables (Cargo.toml), a fraction of the unstripped size. Every
# sink and source is built; `--build-arg FEATURES="--no-default-features --features source-file"`
# builds a smaller archiver (docs/architecture.md, "Build").
FROM rust:1.95-bookworm AS build
ARG FEATURES=""
WORKDIR /src
COPY . .
RUN cargo build --profile dist --locked --bin spillway $FEATURES

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/dist/spillway /usr/local/bin/spillway
COPY config /etc/spillway
WORKDIR /var/lib/spillway
EXPOSE 4573
# `spillway health --ready` probes /ready (the runtime image has no curl).
HEALTHCHECK --interval=10s --timeout=6s --start-period=10s CMD ["spillway", "health", "--ready"]
ENTRYPOINT ["spillway"]
CMD ["run", "--config", "/etc/spillway/minio.yaml"]
