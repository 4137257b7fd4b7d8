// Command in is the Concourse resource's in step for the locker server;
// Concourse runs it as /opt/resource/in.
package main

import "github.com/locker-ci/locker/resource"

func main() { resource.Main(resource.RunIn) }
