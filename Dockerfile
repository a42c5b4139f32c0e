# syntax=docker/dockerfile:1
#
# mshot in a container: `docker build -t mshot .` then
# `docker run --rm -v "$PWD:/work" mshot capture …`.
#
# Stages:
#   build    compiles mshot (rust:1-bookworm, i.e. the newest stable Rust)
#   modules       builds LiME modules for the kernels in KERNELS (see below)
#   modules-repo  just that repository, for `--output type=local,dest=DIR`
#   runtime       debian:bookworm-slim with the binary, CA certificates and the
#                 default module repository (/usr/share/mshot/modules);
#                 mshot speaks SSH itself, so no openssh-client.

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
# Stage `modules`: LiME for a list of kernels, built from Debian's
# lime-forensics-dkms and linux-headers-RELEASE (no kernel installed) by
# kernel-modules/build-lime.sh, and indexed. The manifest is NOT signed here:
# the secret key stays where it lives. A team hosting its own repository:
#
#   docker build --target modules-repo --output type=local,dest=./repo \
#       --build-arg KERNELS="6.1.0-56-amd64 6.1.0-56-cloud-amd64" .
#   mshot repo sign ./repo --secret-key ~/keys/repo.key
#
# then serve ./repo over HTTPS (or copy it) and capture with
# `--repository-url URL --repository-key ~/keys/repo.pub`.
FROM debian:bookworm AS modules
ARG KERNELS="6.1.0-56-amd64 6.1.0-56-cloud-amd64 6.12.117+deb12-amd64 6.12.117+deb12-cloud-amd64"
COPY kernel-modules/build-lime.sh /usr/local/bin/build-lime.sh
COPY --from=build /out/mshot /usr/local/bin/mshot
# hadolint ignore=SC2086
RUN apt-get update \
    && bash /usr/local/bin/build-lime.sh --work /tmp/lime-work --out /repo $KERNELS \
    && mshot repo index /repo \
    && rm -rf /tmp/lime-work /var/lib/apt/lists/*

# The repository alone, for `--output type=local`.
FROM scratch AS modules-repo
COPY --from=modules /repo /

# ---------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A numeric USER, so the runtime can tell it is not root without /etc/passwd.
RUN groupadd --gid 10001 mshot \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin mshot
COPY --from=build /out/mshot /usr/local/bin/mshot
# The default `--repository`: the project's signed demonstration repository
# (kernel-modules/repo, signed with the key built into mshot).
COPY kernel-modules/repo /usr/share/mshot/modules
USER 10001:10001
WORKDIR /home/mshot
ENTRYPOINT ["mshot"]
