//go:build !unix

package filestore

import "io/fs"

// owner is unknown where files have no owning uid.
func owner(fs.FileInfo) string { return "" }
