# One image with every binary; docker-compose.yml picks the command.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p gateway -p backends --bins

FROM debian:bookworm-slim
COPY --from=build /src/target/release/gateway /src/target/release/echo /src/target/release/auth \
     /src/target/release/product /src/target/release/cart /usr/local/bin/
COPY config /etc/gateway
EXPOSE 8080 9100
CMD ["gateway", "run", "--config", "/etc/gateway/docker.yaml"]
