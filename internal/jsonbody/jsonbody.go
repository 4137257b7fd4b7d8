// Package jsonbody reads a request's body that must be one JSON object,
// strictly: a field given twice, data after the object, a value of the
// wrong type, text that is not valid UTF-8 are errors that say what is
// wrong and what to send, never taken silently (encoding/json keeps the
// last of two fields, and turns invalid UTF-8 into U+FFFD). It knows
// nothing of what the fields mean: its callers give the example a
// message shows.
package jsonbody

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/locker-ci/locker/internal/duration"
)

// Errors, which the API answers 400 and 413.
var (
	ErrInvalid  = errors.New("bad request")
	ErrTooLarge = errors.New("request body too large")
)

// Read reads r's body as exactly one JSON object. An empty body is
// an error unless optional is set.
func Read(w http.ResponseWriter, r *http.Request, limit int64, example string, optional bool) (map[string]json.RawMessage, []byte, error) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return nil, nil, fmt.Errorf("%w: the body is over %d bytes; a lock request is a small JSON object such as %s",
			ErrTooLarge, limit, example)
	case err != nil:
		return nil, nil, fmt.Errorf("%w: the body could not be read (%v); send a JSON object such as %s", ErrInvalid, err, example)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err == nil && fields != nil {
		if topLevelKeys(data) != len(fields) {
			return nil, nil, fmt.Errorf("%w: the field %q is given twice in the body; give each field once", ErrInvalid, duplicateKey(data))
		}
		return fields, data, nil
	}
	if err := explain(data, example, optional); err != nil {
		return nil, nil, err
	}
	return map[string]json.RawMessage{}, data, nil // an empty body, allowed
}

// topLevelKeys counts the keys of the JSON object in data, which
// json.Unmarshal has taken: more than its map holds means one is given
// twice (encoding/json keeps the last one silently).
func topLevelKeys(data []byte) int {
	keys, depth, inString, afterValue := 0, 0, false, false
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch {
		case inString && c == '\\':
			i++ // skip the escaped character
		case inString && c == '"':
			inString = false
		case inString:
		case c == '"':
			if depth == 1 && !afterValue {
				keys++
			}
			inString = true
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			depth--
		case c == ':' && depth == 1:
			afterValue = true
		case c == ',' && depth == 1:
			afterValue = false
		}
	}
	return keys
}

// duplicateKey returns the first key that the JSON object in data gives
// twice (the slow path, for the error message).
func duplicateKey(data []byte) string {
	dec := json.NewDecoder(bytes.NewReader(data))
	seen := map[string]bool{}
	if _, err := dec.Token(); err != nil {
		return ""
	}
	for dec.More() {
		t, err := dec.Token()
		key, _ := t.(string)
		if err != nil || seen[key] {
			return key
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return ""
		}
	}
	return ""
}

// explain says what is wrong with a body that is not one JSON object,
// or returns nil for an empty body when that is allowed. (It is the slow
// path: json.Unmarshal only says where it stopped.)
func explain(data []byte, example string, optional bool) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	var fields map[string]json.RawMessage
	err := dec.Decode(&fields)
	trailing := false
	if err == nil {
		// Only white space may follow the object.
		if _, err = dec.Token(); err == io.EOF {
			err = nil
		} else {
			trailing = true
		}
	}
	var wrongType *json.UnmarshalTypeError
	switch {
	case trailing:
		return fmt.Errorf("%w: there is data after the JSON object; send exactly one object, e.g. %s", ErrInvalid, example)
	case errors.Is(err, io.EOF) && optional:
		return nil
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: the request has no body; send a JSON object such as %s", ErrInvalid, example)
	case errors.As(err, &wrongType), err == nil && fields == nil:
		return fmt.Errorf("%w: the body must be a JSON object such as %s", ErrInvalid, example)
	case err != nil:
		return fmt.Errorf("%w: the body is not valid JSON (%v); send an object such as %s", ErrInvalid, err, example)
	}
	return fmt.Errorf("%w: the body must be a JSON object such as %s", ErrInvalid, example) // not reached: Unmarshal took it
}

// String sets *dst to the string in fields[name]. An absent or null
// field leaves *dst alone; example is a body with it, for the message.
func String(fields map[string]json.RawMessage, name, example string, dst *string) error {
	raw, ok := fields[name]
	if !ok {
		return nil
	}
	// Most values are strings with nothing to unescape: no need to decode.
	if n := len(raw); n >= 2 && raw[0] == '"' && raw[n-1] == '"' &&
		!bytes.ContainsAny(raw[1:n-1], `"\`) && utf8.Valid(raw[1:n-1]) {
		*dst = string(raw[1 : n-1])
		return nil
	}
	v, err := decodeString(raw, example)
	if err != nil {
		return fmt.Errorf("%w: %q %s", ErrInvalid, name, err)
	}
	*dst = v
	return nil
}

// decodeString decodes raw, a JSON value that must be a string: the slow
// path of stringField, apart so that its variable, which encoding/json
// needs a pointer to, is made only when a field takes it.
func decodeString(raw json.RawMessage, example string) (string, error) {
	var v string
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", fmt.Errorf("must be a string, e.g. %s", example)
	}
	// encoding/json turns invalid UTF-8, and escapes of lone surrogates,
	// into U+FFFD: two different keys would become one.
	if !utf8.Valid(raw) || (strings.ContainsRune(v, utf8.RuneError) &&
		!bytes.Contains(raw, []byte("\uFFFD")) && !bytes.Contains(bytes.ToLower(raw), []byte(`\ufffd`))) {
		return "", errors.New("is not valid UTF-8 (or escapes half a surrogate pair); send text")
	}
	return v, nil
}

// Duration returns the duration in fields[name], 0 when absent or null.
func Duration(fields map[string]json.RawMessage, name string, zeroOK bool) (time.Duration, error) {
	var s string
	if err := String(fields, name, "", &s); err != nil {
		return 0, fmt.Errorf("%w: %q must be a duration string such as \"30s\", \"5m\" or \"1h\"", ErrInvalid, name)
	}
	if s == "" {
		return 0, nil
	}
	return ParseDuration(name, s, zeroOK)
}

// ParseDuration parses s, the value of name, as a duration
// (internal/duration, as the command line reads its flags) that must be
// positive (or zero, when zeroOK).
func ParseDuration(name, s string, zeroOK bool) (time.Duration, error) {
	d, err := duration.Parse(s)
	if err == nil && d == 0 && !zeroOK {
		err = errors.New("it must be more than 0")
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %s must be a positive duration such as \"30s\", \"5m\" or \"1h\"; got %q: %v", ErrInvalid, name, s, err)
	}
	return d, nil
}

// FirstUnknown returns the first of m's keys, in sorted order, that known
// does not list. Sorting happens only when there is one to report.
func FirstUnknown[V any](m map[string]V, known []string) (string, bool) {
	for k := range m {
		if slices.Contains(known, k) {
			continue
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if !slices.Contains(known, k) {
				return k, true
			}
		}
	}
	return "", false
}
