# syntax=docker/dockerfile:1
# Multi-stage: build with the Rust toolchain, run on a small Debian image as
# a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin chronolog \
    && cp target/release/chronolog /usr/local/bin/chronolog

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin chronolog
COPY --from=build /usr/local/bin/chronolog /usr/local/bin/chronolog
USER 10001
ENV LOG_FORMAT=json \
    COMMAND_ADDR=0.0.0.0:7080 \
    QUERY_ADDR=0.0.0.0:7081 \
    CONSUMER_ADDR=0.0.0.0:7082
EXPOSE 7080 7081 7082
ENTRYPOINT ["chronolog"]
CMD ["serve"]
