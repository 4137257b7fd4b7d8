//go:build !pprof

package profile

// Start does nothing in a build without the pprof tag.
func Start() (stop func()) { return func() {} }
