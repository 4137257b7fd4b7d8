package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/locker-ci/locker/internal/lock"
)

// Follow reads the stream of changes, GET /events, narrowed by query
// (lock=NAME or pool=POOL), from after the event with ID lastID (0: from
// now), calling event for each lock's event and notice for what the
// stream says of itself (kind "gap": events were missed; "end": the
// server ends it), until the stream or ctx ends. It returns the ID of the
// last event it passed on (lastID if none), to go on from.
func (c *Client) Follow(ctx context.Context, query url.Values, lastID uint64, event func(lock.Event), notice func(kind, msg string)) (uint64, error) {
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	if lastID > 0 {
		q.Set("last_event_id", strconv.FormatUint(lastID, 10))
	}
	resp, err := c.send(ctx, http.MethodGet, "/events", q, nil, "")
	if err != nil {
		return lastID, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxReplyBytes)
	var kind, data string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "" && data != "":
			if kind == "" {
				var e lock.Event
				if err := json.Unmarshal([]byte(data), &e); err != nil {
					return lastID, fmt.Errorf("the locker sent an event that is not one: %w", err)
				}
				event(e)
				lastID = e.ID
			} else {
				var n struct {
					Error string `json:"error"`
				}
				_ = json.Unmarshal([]byte(data), &n)
				notice(kind, c.terms.Replace(n.Error))
			}
			kind, data = "", ""
		case strings.HasPrefix(line, "event: "):
			kind = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			data = line[len("data: "):]
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return lastID, fmt.Errorf("the stream from the locker broke: %w", err)
	}
	return lastID, ctx.Err()
}
