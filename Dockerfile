# toolgate container image: the sidecar (`toolgate run`) and its pod init step
# (`toolgate init-iptables`), as the Helm chart in charts/toolgate uses them.
#
#   docker build -t toolgate:dev .
#   docker run --rm toolgate:dev --help

FROM rust:1-bookworm AS build
# pingora builds zlib-ng through libz-ng-sys, which needs cmake.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin toolgate \
 && strip target/release/toolgate

FROM debian:bookworm-slim
# ca-certificates: system roots for upstream TLS and the agent's trust bundle;
# iptables (nft and legacy): `toolgate init-iptables`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates iptables \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1337 toolgate \
 && useradd --uid 1337 --gid 1337 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin toolgate
COPY --from=build /src/target/release/toolgate /usr/local/bin/toolgate
# Transparent capture exempts this uid from redirection: toolgate's own traffic never loops.
USER 1337:1337
EXPOSE 15000 15001 15006
ENTRYPOINT ["/usr/local/bin/toolgate"]
CMD ["run", "-c", "/etc/toolgate/config/toolgate.yaml"]
