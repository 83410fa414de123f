# rowpipe container images. One builder stage compiles the whole workspace once;
# three small runtime targets each carry one binary:
#
#   docker build --target upload   -t rowpipe-upload   .
#   docker build --target consumer -t rowpipe-consumer .
#   docker build --target cli      -t rowpipe-cli      .
#
# Dependency caching works without cargo-chef: the `skeleton` stage reduces the
# build context to the manifests (Cargo.toml, Cargo.lock, build scripts) plus
# empty stub crate roots of the workspace members, which all live under
# services/; vendor/ holds patched dependencies and goes in whole. Its output
# only changes when a manifest or a vendored crate changes, so the
# `COPY --from=skeleton` layer and the dependency build after it stay cached
# while only .rs sources change. BuildKit cache mounts additionally keep the
# cargo registry between builds.
#
# No `# syntax=` line: BuildKit's built-in Dockerfile frontend has every feature
# used here (RUN --mount=type=cache), and a syntax image would have to be pulled
# from a registry. Both base images are build arguments, so the file builds
# where no registry is reachable: scripts/build-images makes them locally
# (debootstrap + docker import), builds the three targets and runs them.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# --- skeleton: manifests + stub sources, for the cached dependency build ------
FROM ${RUST_IMAGE} AS skeleton
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /ctx
COPY . .
RUN mkdir -p /skel \
 && cp -r Cargo.toml Cargo.lock vendor /skel/ \
 && if [ -d .cargo ]; then cp -r .cargo /skel/.cargo; fi \
 && if [ -f rust-toolchain.toml ]; then cp rust-toolchain.toml /skel/; fi \
 && find services -name Cargo.toml -print0 \
    | while IFS= read -r -d '' manifest; do \
        dir="$(dirname "$manifest")"; \
        mkdir -p "/skel/$dir"; \
        cp "$manifest" "/skel/$manifest"; \
        if [ -f "$dir/build.rs" ]; then cp "$dir/build.rs" "/skel/$dir/build.rs"; fi; \
      done \
 && find services -name '*.rs' \
      \( -path '*/src/lib.rs' -o -path '*/src/main.rs' -o -path '*/src/bin/*' \
         -o -path '*/tests/*' -o -path '*/benches/*' -o -path '*/examples/*' \) -print0 \
    | while IFS= read -r -d '' src; do \
        mkdir -p "/skel/$(dirname "$src")"; \
        case "$src" in \
          */src/lib.rs) : > "/skel/$src" ;; \
          *) echo 'fn main() {}' > "/skel/$src" ;; \
        esac; \
      done

# --- builder: dependencies first (cached), then the workspace ----------------
FROM ${RUST_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    SQLX_OFFLINE=true
COPY --from=skeleton /skel/ ./
RUN --mount=type=cache,id=rowpipe-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=rowpipe-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    cargo build --release --locked --workspace --bins
COPY . .
# COPY keeps the context's mtimes, which are older than the stub build: touch the
# real sources so cargo rebuilds the workspace crates (dependencies stay built).
RUN --mount=type=cache,id=rowpipe-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=rowpipe-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    find services -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && install -m 0755 target/release/rowpipe-upload target/release/rowpipe-consumer target/release/rowpipe /out/

# --- runtime base: libc + CA certificates, user 65532 (nonroot) --------------
FROM ${RUNTIME_IMAGE} AS runtime
WORKDIR /home/nonroot
USER 65532:65532
ENV RUST_LOG=info \
    ROWPIPE_LOG_FORMAT=json

# --- target: upload -----------------------------------------------------------
FROM runtime AS upload
COPY --from=builder /out/rowpipe-upload /usr/local/bin/rowpipe-upload
ENV ROWPIPE_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/rowpipe-upload"]

# --- target: consumer ---------------------------------------------------------
FROM runtime AS consumer
COPY --from=builder /out/rowpipe-consumer /usr/local/bin/rowpipe-consumer
ENV ROWPIPE_METRICS_LISTEN=0.0.0.0:9090
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/rowpipe-consumer"]

# --- target: cli (operator CLI; the chart's migration Job runs `rowpipe migrate`)
FROM runtime AS cli
COPY --from=builder /out/rowpipe /usr/local/bin/rowpipe
ENTRYPOINT ["/usr/local/bin/rowpipe"]
CMD ["--help"]
