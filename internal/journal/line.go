package journal

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
)

// The line format: "<crc32c of the payload, 8 hex digits> <payload>\n".

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// errBadLine is a line that is not a whole record.
var errBadLine = errors.New("not a whole record")

// Line returns payload as the journal writes it: one line, checksummed.
func Line(payload []byte) []byte { return appendLine(nil, payload) }

// appendLine appends payload to buf as one line.
func appendLine(buf, payload []byte) []byte {
	const hex = "0123456789abcdef"
	sum := crc32.Checksum(payload, crcTable)
	for i := range 8 {
		buf = append(buf, hex[sum>>(28-4*i)&0xF])
	}
	buf = append(buf, ' ')
	buf = append(buf, payload...)
	return append(buf, '\n')
}

// readLines calls apply with the payload of each whole line in data, in
// order, and returns how many bytes those lines take. Lines that a crash
// left torn end the good ones: a last line without its newline, or bad
// lines with no good line after them (the unsynced end of the last write).
// A bad line followed by a good one is damage that no crash explains: an
// error.
func readLines(data []byte, apply func(payload []byte) error) (int, error) {
	good := 0
	for good < len(data) {
		line := data[good:]
		end := bytes.IndexByte(line, '\n')
		if end < 0 {
			return good, nil // torn: the newline never made it to disk
		}
		payload, err := parseLine(line[:end])
		if err != nil {
			if anyLine(line[end+1:]) {
				return good, fmt.Errorf("damaged line at byte %d, with good lines after it: %w", good, err)
			}
			return good, nil // torn: the rest of the last write
		}
		if err := apply(payload); err != nil {
			return good, fmt.Errorf("line at byte %d: %w", good, err)
		}
		good += end + 1
	}
	return good, nil
}

// anyLine reports whether data holds a whole, good line.
func anyLine(data []byte) bool {
	for len(data) > 0 {
		end := bytes.IndexByte(data, '\n')
		if end < 0 {
			return false
		}
		if _, err := parseLine(data[:end]); err == nil {
			return true
		}
		data = data[end+1:]
	}
	return false
}

// parseLine returns the payload of line, checked against its checksum.
func parseLine(line []byte) ([]byte, error) {
	if len(line) < 10 || line[8] != ' ' {
		return nil, errBadLine
	}
	sum, err := strconv.ParseUint(string(line[:8]), 16, 32)
	if err != nil || uint32(sum) != crc32.Checksum(line[9:], crcTable) {
		return nil, fmt.Errorf("%w: checksum does not match", errBadLine)
	}
	return line[9:], nil
}
