# Killswitch: one static binary on a distroless base, running as non-root (65532, the
# base image's "nonroot" user). The image has no shell and no HTTP client: container health
# checks use `killswitch healthcheck`.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/killswitch ./cmd/killswitch
# The directories the runtime user writes, created here (distroless has no mkdir) and
# copied below owned by that user: a fresh named volume mounted on one of them starts as a
# copy of it, owner included, so the user can write to it. /var/lib/killswitch is the data
# directory (keys, credentials, API users); /srv/killswitch receives files handed to other
# containers (the NATS authorization, a sensor's credential).
RUN mkdir -p /out/var/lib/killswitch /out/srv/killswitch && chmod 0700 /out/var/lib/killswitch && chmod 0755 /out/srv/killswitch

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/killswitch /usr/local/bin/killswitch
COPY --from=build --chown=65532:65532 /out/var/lib/killswitch /var/lib/killswitch
COPY --from=build --chown=65532:65532 /out/srv/killswitch /srv/killswitch
USER 65532:65532
ENV KILLSWITCH_DATA_DIR=/var/lib/killswitch
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/killswitch"]
CMD ["run"]
