# Killswitch: one static binary on a distroless base, running as non-root.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/killswitch ./cmd/killswitch

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/killswitch /usr/local/bin/killswitch
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/killswitch"]
CMD ["run"]
