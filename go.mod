module github.com/locker-ci/locker

go 1.26.0

require (
	github.com/gorilla/mux v1.8.1
	gopkg.in/yaml.v2 v2.4.0
)

require github.com/anishathalye/porcupine v1.3.1 // indirect
