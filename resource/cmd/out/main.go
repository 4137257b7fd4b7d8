// Command out is the Concourse resource's out step for the locker server;
// Concourse runs it as /opt/resource/out.
package main

import "github.com/locker-ci/locker/resource"

func main() { resource.Main(resource.RunOut) }
