# The bg-queue demo (webhook service) and its load generator.
#   docker build -t bg-queue-demo .
# Multi-stage: a full Rust toolchain builds the examples; the runtime image
# is Debian slim with the two binaries, running as an unprivileged user.

FROM rust:1.90-bookworm AS build
WORKDIR /src
# Manifests first, so dependency builds are cached across source edits.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
COPY benches ./benches
# `postgres`: the webhook's durable mode, on when DATABASE_URL is set.
RUN cargo build --release --locked --features postgres --example webhook --example loadgen \
 && mkdir -p /out \
 && cp target/release/examples/webhook target/release/examples/loadgen /out/

FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bgqueue
COPY --from=build /out/webhook /out/loadgen /usr/local/bin/
USER 10001:10001
ENV LISTEN_ADDR=0.0.0.0:3000
# The debug listener stays on the container's loopback unless
# DEBUG_LISTEN_ADDR says otherwise (docker-compose.yml sets 0.0.0.0:3001 and
# publishes it on the host's loopback only): it shows task names and error
# text (docs/security.md).
EXPOSE 3000 3001
# bash's /dev/tcp is enough for a health check; no curl in the image.
HEALTHCHECK --interval=5s --timeout=3s --retries=10 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/3000 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '^ok' <&3"]
ENTRYPOINT ["/usr/local/bin/webhook"]
