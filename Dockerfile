# Multi-stage build: a static binary in a minimal, non-root image.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/tbproxy .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tbproxy /tbproxy
USER nonroot:nonroot
EXPOSE 8080
ENV PORT=8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/tbproxy", "healthcheck"]
ENTRYPOINT ["/tbproxy"]
