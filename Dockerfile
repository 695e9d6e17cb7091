# syntax=docker/dockerfile:1
#
# jitgate in a container: a Rust build stage and a small Debian runtime stage that runs
# as an unprivileged user. Build it (from the repository's root, with BuildKit):
#
#   docker build --build-arg JITGATE_COMMIT="$(git rev-parse --short HEAD)" -t jitgate .
#
# and run it with the configuration mounted read-only and the database on a volume:
#
#   docker run -d --name jitgate -p 3000:3000 \
#     -v "$PWD/jitgate.toml:/etc/jitgate/jitgate.toml:ro" -v jitgate-data:/var/lib/jitgate \
#     -e SLACK_BOT_TOKEN -e SLACK_SIGNING_SECRET jitgate
#
# tests/integration/packaging.rs checks the runtime stage against the binary.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The build context has no .git (see .dockerignore), so `jitgate --version` learns the
# commit from this argument.
ARG JITGATE_COMMIT=unknown
ENV JITGATE_COMMIT=${JITGATE_COMMIT}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --profile dist --bin jitgate \
    && install -D -m 0755 target/dist/jitgate /out/jitgate

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: Slack, PagerDuty, Opsgenie and webhooks are called over TLS with the
# system's roots. Versions are not pinned: the stable release's security updates should
# be picked up by a rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 jitgate \
    && useradd --system --uid 10001 --gid jitgate --home-dir /var/lib/jitgate --no-create-home \
       --shell /usr/sbin/nologin jitgate \
    && install -d -o jitgate -g jitgate -m 0700 /var/lib/jitgate \
    && install -d -m 0755 /etc/jitgate
COPY --from=build /out/jitgate /usr/local/bin/jitgate
# The configuration is mounted at JITGATE_CONFIG; the database lives on the volume
# (JITGATE_DATABASE_URL overrides [database] url, so the mounted file need not know).
ENV JITGATE_CONFIG=/etc/jitgate/jitgate.toml \
    JITGATE_DATABASE_URL=sqlite:///var/lib/jitgate/jitgate.db
WORKDIR /var/lib/jitgate
USER 10001:10001
VOLUME ["/var/lib/jitgate"]
EXPOSE 3000
# `jitgate healthcheck` GETs /healthz at the configuration's [server] listen address.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/jitgate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/jitgate"]
CMD ["serve"]
