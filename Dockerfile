# The locker server: one static binary, run as a user without privileges,
# its locks in the /data volume. Build from the repository root:
#   docker build --build-arg VERSION=$(git describe --tags --always) -t locker .
#   docker run -d -p 3000:3000 -v locker-data:/data -e AUTH_USER=ci -e AUTH_PASS=s3cret locker
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# VERSION is what locker --version and the status page say.
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/locker .
RUN mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/locker /usr/local/bin/locker
COPY --from=build --chown=nonroot:nonroot /out/data /data
ENV LOCKER_CONFIG=/data/locker.yml PORT=3000
VOLUME /data
EXPOSE 3000
USER nonroot
HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/local/bin/locker", "health"]
ENTRYPOINT ["/usr/local/bin/locker"]
CMD ["serve"]
