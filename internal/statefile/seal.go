package statefile

// The seal: the last line of a state file Locker writes is a checksum of
// the lines above it. A file changed since (edited by hand, a lower
// last_token, a lock removed) no longer matches, and is refused until the
// person who changed it deletes the line, saying that the change is meant.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
)

// sealPrefix opens the seal line; the checksum's hex digits follow.
const sealPrefix = "# sha256 "

// sealSuffix ends the seal line, for the person who reads the file.
const sealSuffix = " of the lines above; delete this line after editing by hand"

// ErrEdited is wrapped by Decode's error for a file whose seal does not
// match its content.
var ErrEdited = fmt.Errorf("it was changed since locker wrote it: its last line, a checksum of the lines above, does not match them")

// sealWriter hashes what it passes on to w.
type sealWriter struct {
	w io.Writer
	h hash.Hash
}

func newSealWriter(w io.Writer) *sealWriter { return &sealWriter{w: w, h: sha256.New()} }

func (s *sealWriter) Write(p []byte) (int, error) {
	s.h.Write(p) // a hash.Hash never fails
	return s.w.Write(p)
}

// seal writes the seal line for what has passed through s.
func (s *sealWriter) seal() error {
	_, err := fmt.Fprintf(s.w, "%s%x%s\n", sealPrefix, s.h.Sum(nil), sealSuffix)
	return err
}

// unseal returns data without its seal line, and whether it had one. A
// seal that does not match is an error wrapping ErrEdited.
func unseal(data []byte) (content []byte, sealed bool, err error) {
	body := bytes.TrimSuffix(data, []byte("\n"))
	i := bytes.LastIndexByte(body, '\n') + 1
	line, ok := bytes.CutPrefix(body[i:], []byte(sealPrefix))
	if !ok {
		return data, false, nil
	}
	content = data[:i]
	want, _, _ := bytes.Cut(line, []byte(" "))
	got := sha256.Sum256(content)
	if !bytes.Equal(want, []byte(hex.EncodeToString(got[:]))) {
		return nil, false, fmt.Errorf("%w.\nIf the change is meant, delete that last line (\"%s...\"): locker then reads the file as it is and seals it again at its next write. If not, restore the file from a backup", ErrEdited, sealPrefix)
	}
	return content, true, nil
}
