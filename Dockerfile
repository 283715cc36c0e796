# One image, one binary: `hookrelay controller` and `hookrelay ingest` run
# from it as two containers of one Pod (see charts/hookrelay); `hookrelay
# console` as its own Deployment when enabled.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# askama.toml: where the console's compile-checked templates are.
COPY Cargo.toml Cargo.lock rustfmt.toml askama.toml ./
COPY src ./src
COPY crds ./crds
COPY charts ./charts
COPY examples ./examples
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin hookrelay

# distroless/cc: glibc and CA certificates, no shell, runs as nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/hookrelay /hookrelay
USER 65532:65532
ENTRYPOINT ["/hookrelay"]
