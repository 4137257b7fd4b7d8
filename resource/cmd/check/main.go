// Command check is the Concourse resource's check step for the locker server;
// Concourse runs it as /opt/resource/check.
package main

import "github.com/locker-ci/locker/resource"

func main() { resource.Main(resource.RunCheck) }
