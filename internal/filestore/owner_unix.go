//go:build unix

package filestore

import (
	"io/fs"
	"os/user"
	"strconv"
	"syscall"
)

// owner names the user who owns the file fi describes, e.g. "root".
func owner(fi fs.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	uid := strconv.FormatUint(uint64(st.Uid), 10)
	if u, err := user.LookupId(uid); err == nil {
		return u.Username
	}
	return "uid " + uid
}
