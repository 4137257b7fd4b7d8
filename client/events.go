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
)

// Filter says whose events Follow passes on: the lock called Lock's, the
// members' of the pool called Pool, or, with neither, every lock's.
type Filter struct {
	Lock string // a lock's name
	Pool string // a pool's name
}

// Notice is what the stream of events says of itself.
type Notice struct {
	// Kind is "gap" when events were missed (the server no longer keeps
	// those after the ID Follow went on from), "end" when the server ends
	// the stream (it shuts down, or the client fell too far behind).
	Kind    string
	Message string // says what happened and what to do, as Config.Rewrite leaves it
}

// Follow reads the stream of changes (GET /events) that filter lets
// through, from after the event with ID after (0: from now), calling
// event for each event and notice, unless nil, for what the stream says
// of itself, until the stream or ctx ends. It returns the ID of the last
// event it passed on (after, if none): call it again with that ID to go
// on where it stopped, missing none the server still keeps. It does not
// connect again by itself.
func (c *Client) Follow(ctx context.Context, filter Filter, after uint64, event func(Event), notice func(Notice)) (uint64, error) {
	q := url.Values{}
	if filter.Lock != "" {
		q.Set("lock", filter.Lock)
	}
	if filter.Pool != "" {
		q.Set("pool", filter.Pool)
	}
	if after > 0 {
		q.Set("last_event_id", strconv.FormatUint(after, 10))
	}
	resp, err := c.send(ctx, http.MethodGet, "/events", q, nil, nil)
	if err != nil {
		return after, err
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
				var e Event
				if err := json.Unmarshal([]byte(data), &e); err != nil {
					return after, fmt.Errorf("the locker sent an event that is not one: %w", err)
				}
				event(e)
				after = e.ID
			} else if notice != nil {
				var n struct {
					Error string `json:"error"`
				}
				_ = json.Unmarshal([]byte(data), &n)
				notice(Notice{Kind: kind, Message: c.say(n.Error)})
			}
			kind, data = "", ""
		case strings.HasPrefix(line, "event: "):
			kind = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			data = line[len("data: "):]
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return after, fmt.Errorf("the stream from the locker broke: %w", err)
	}
	return after, ctx.Err()
}
