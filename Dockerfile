# syntax=docker/dockerfile:1
#
# mshot in a container: `docker build -t mshot .` then
# `docker run --rm -v "$PWD:/work" mshot capture …`.
#
# Stages:
#   build    compiles mshot (rust:1-bookworm, i.e. the newest stable Rust)
#   modules  RESERVED: will build LiME kernel modules (see below)
#   runtime  debian:bookworm-slim with the binary and CA certificates only;
#            mshot speaks SSH itself, so no openssh-client.

# ---------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The crates.io registry and target/ are BuildKit cache mounts, so a rebuild
# after a source change downloads nothing and recompiles only what changed;
# this works whatever the workspace's members are, unlike a layer of stub
# sources that would have to list them. Cache mounts are not part of the
# image, hence the copy out to /out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin mshot \
    && install -D -m 0755 target/release/mshot /out/mshot

# ---------------------------------------------------------------------------
# Stage `modules` — RESERVED for building LiME kernel modules for target
# kernels (another issue). It will look like:
#
#   FROM debian:bookworm AS modules
#   … install the kernel headers, build kernel-modules/ …
#
# and the runtime stage will `COPY --from=modules` the module repository.
# ---------------------------------------------------------------------------

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A numeric USER, so the runtime can tell it is not root without /etc/passwd.
RUN groupadd --gid 10001 mshot \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin mshot
COPY --from=build /out/mshot /usr/local/bin/mshot
USER 10001:10001
WORKDIR /home/mshot
ENTRYPOINT ["mshot"]
