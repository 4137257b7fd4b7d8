package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
)

// poolPath is the API path of the pool called name.
func poolPath(name string) string { return "/pool/" + url.PathEscape(name) }

// SetPool makes the pool called name of members, or replaces its
// members, and returns the server's sentence about it. A pool's members
// are locks: Claim takes free ones.
func (c *Client) SetPool(ctx context.Context, name string, members []string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	data, err := c.Do(ctx, http.MethodPut, poolPath(name), nil, map[string]any{"members": members}, "")
	if err != nil {
		return "", err
	}
	var reply struct {
		Response string `json:"response"`
	}
	_ = json.Unmarshal(data, &reply) // the sentence is all it says
	return reply.Response, nil
}

// Pools returns every pool's members, by pool.
func (c *Client) Pools(ctx context.Context) (map[string][]string, error) {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	data, err := c.Do(ctx, http.MethodGet, "/pools", nil, nil, "")
	if err != nil {
		return nil, err
	}
	var pools map[string]struct {
		Members []string `json:"members"`
	}
	if err := json.Unmarshal(data, &pools); err != nil {
		return nil, fmt.Errorf("the locker's answer to GET /pools is not a list of pools: %w", err)
	}
	out := make(map[string][]string, len(pools))
	for name, p := range pools {
		out[name] = p.Members
	}
	return out, nil
}

// Pool returns the pool called name: its members' locks, the free ones
// and the claims waiting.
func (c *Client) Pool(ctx context.Context, name string) (PoolInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	data, err := c.Do(ctx, http.MethodGet, poolPath(name), nil, nil, "")
	if err != nil {
		return PoolInfo{}, err
	}
	var p PoolInfo
	if err := json.Unmarshal(data, &p); err != nil {
		return PoolInfo{}, fmt.Errorf("the locker's answer about the pool %q is not a pool: %w", name, err)
	}
	p.Raw = data
	return p, nil
}

// DeletePool removes the pool called name; its members stay locks.
func (c *Client) DeletePool(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	_, err := c.Do(ctx, http.MethodDelete, poolPath(name), nil, nil, "")
	return err
}
