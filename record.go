package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"maps"
	"slices"
	"strconv"
)

// The journal's line format: "<crc32c, 8 hex digits> <JSON record>\n".

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// errBadRecord is a line that is not a whole record.
var errBadRecord = errors.New("not a whole record")

// record is one journal line: the locks one change touched, as they were
// after it (nil for a lock it freed), and the token counter.
type record struct {
	Seq       uint64           `json:"seq"`
	LastToken uint64           `json:"last_token"`
	Locks     map[string]*Lock `json:"locks"`
}

// appendRecord appends rec to buf as one journal line. The JSON is what
// json.Marshal writes for rec (see jsonBuf); the line is left out, and buf
// returned as it was, if rec holds a time that JSON cannot.
func appendRecord(buf []byte, rec record) ([]byte, error) {
	const hex = "0123456789abcdef"
	start := len(buf)
	j := jsonBuf{b: append(buf, "00000000 "...)}
	j.raw(`{"seq":`)
	j.uint(rec.Seq)
	j.raw(`,"last_token":`)
	j.uint(rec.LastToken)
	j.raw(`,"locks":`)
	if rec.Locks == nil {
		j.raw("null")
	} else {
		j.raw("{")
		for i, name := range sortedKeys(rec.Locks) {
			if i > 0 {
				j.raw(",")
			}
			j.str(name)
			j.raw(":")
			j.lock(rec.Locks[name])
		}
		j.raw("}")
	}
	j.raw("}")
	if j.err != nil {
		return buf[:start], j.err
	}
	sum := crc32.Checksum(j.b[start+9:], crcTable)
	for i := range 8 {
		j.b[start+i] = hex[sum>>(28-4*i)&0xF]
	}
	return append(j.b, '\n'), nil
}

// sortedKeys returns m's keys in order, as encoding/json writes a map.
func sortedKeys[V any](m map[string]V) []string {
	if len(m) == 1 { // a record's usual size: no sorting, one small slice
		for k := range m {
			return []string{k}
		}
	}
	return slices.Sorted(maps.Keys(m))
}

// readRecords calls apply for each whole record in data, in order, and
// returns how many bytes they take. Records that a crash left torn end the
// good ones: a last line without its newline, or bad lines with no good
// line after them (the unsynced end of the last write). A bad line followed
// by a good one is damage that no crash explains: an error.
func readRecords(data []byte, apply func(record) error) (int, error) {
	good := 0
	for good < len(data) {
		line := data[good:]
		end := bytes.IndexByte(line, '\n')
		if end < 0 {
			return good, nil // torn: the newline never made it to disk
		}
		rec, err := parseRecord(line[:end])
		if err != nil {
			if anyRecord(line[end+1:]) {
				return good, fmt.Errorf("damaged line at byte %d, with good lines after it: %w", good, err)
			}
			return good, nil // torn: the rest of the last write
		}
		if err := apply(rec); err != nil {
			return good, fmt.Errorf("line at byte %d: %w", good, err)
		}
		good += end + 1
	}
	return good, nil
}

// anyRecord reports whether data holds a whole, good record.
func anyRecord(data []byte) bool {
	for len(data) > 0 {
		end := bytes.IndexByte(data, '\n')
		if end < 0 {
			return false
		}
		if _, err := parseRecord(data[:end]); err == nil {
			return true
		}
		data = data[end+1:]
	}
	return false
}

func parseRecord(line []byte) (record, error) {
	if len(line) < 10 || line[8] != ' ' {
		return record{}, errBadRecord
	}
	sum, err := strconv.ParseUint(string(line[:8]), 16, 32)
	if err != nil || uint32(sum) != crc32.Checksum(line[9:], crcTable) {
		return record{}, fmt.Errorf("%w: checksum does not match", errBadRecord)
	}
	var rec record
	dec := json.NewDecoder(bytes.NewReader(line[9:]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return record{}, fmt.Errorf("record: %w", err)
	}
	return rec, nil
}
