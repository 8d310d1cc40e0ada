# The operator's image: the release binaries `omero-operator` and `kubectl-omero` on
# distroless's glibc base, as the non-root user `nonroot` (uid 65532).
#
#   docker build -t registry.example.org/omero-operator:0.1.0 .
#
# Both stages are Debian 12 (bookworm): the binaries link glibc dynamically (ring's C code and
# std), and cc-debian12 carries the same glibc and libgcc they were built against. Pinned to
# version tags; add digests once you have pulled and checked them.

FROM rust:1.89-bookworm AS build
WORKDIR /src
# The manifest names the bench targets: their files must exist for cargo to read it.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY src ./src
# The scripts the operator ships in pod templates and ConfigMaps (include_str! in src/render).
COPY counter ./counter
COPY logs ./logs
RUN cargo build --release --locked --bin omero-operator --bin kubectl-omero --bin kubectl_complete-omero

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/omero-operator /src/target/release/kubectl-omero \
     /src/target/release/kubectl_complete-omero /usr/local/bin/
USER 65532:65532
# /metrics, /healthz, /readyz
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/omero-operator"]
CMD ["run"]
