package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// setFigures compare a set of two locks with one lock, at cfg.clients
// clients each on locks of their own, measured in alternation; and claims
// on a pool of ten members shared by all the clients.
type setFigures struct {
	OneRPS   figure `json:"one_lock_rps"`
	SetRPS   figure `json:"set_of_two_rps"`
	ClaimRPS figure `json:"pool_claims_rps"` // claims and releases a second, each a request
}

// benchSets runs the parallel workload on one lock, then on a set of two
// (PUT and DELETE /locks), on a fresh server each, cfg.runs times.
func benchSets(cfg config, dir string, r *report) error {
	var one, set, claims []loadResult
	for i := range cfg.runs {
		res, err := lockerRun(cfg, dir, 2*i, cfg.clients, ownLock("one"))
		if err != nil {
			return err
		}
		one = append(one, res)
		if res, err = lockerRun(cfg, dir, 2*i+1, cfg.clients, ownSet); err != nil {
			return err
		}
		set = append(set, res)
		if res, err = claimRun(cfg, dir, 3*cfg.runs+i); err != nil {
			return err
		}
		claims = append(claims, res)
	}
	r.Sets = &setFigures{OneRPS: rpsFigure(one), SetRPS: rpsFigure(set), ClaimRPS: rpsFigure(claims)}
	return nil
}

// claimRun starts a server with a pool of ten members and has every
// client claim one (waiting when none is free) and give it back.
func claimRun(cfg config, dir string, i int) (loadResult, error) {
	runDir := filepath.Join(dir, fmt.Sprintf("claims-%d", i))
	if err := os.MkdirAll(runDir, 0o750); err != nil {
		return loadResult{}, err
	}
	p, _, err := startLocker(cfg, runDir)
	if err != nil {
		return loadResult{}, err
	}
	var members []string
	for m := range 10 {
		members = append(members, fmt.Sprintf("%q", fmt.Sprintf("env-%d", m)))
	}
	c := newClient(p.url)
	if status, err := c.do("PUT", "/pool/envs", `{"members": [`+strings.Join(members, ",")+`]}`); err != nil || status != 200 {
		_ = p.stop()
		return loadResult{}, fmt.Errorf("PUT /pool/envs = %d, %v", status, err)
	}
	res, err := runOnce(cfg, p, cfg.clients, claimOne, p.stop)
	_ = os.RemoveAll(runDir)
	return res, err
}

// claimOne claims a member of the pool envs, waiting for one, and gives
// it back.
func claimOne(c *client, id int, lat *[]time.Duration) (int, error) {
	body := fmt.Sprintf(`{"key":"k%d"}`, id)
	t0 := time.Now()
	req, err := http.NewRequest("PUT", c.base+"/pool/envs/claim?wait=30s", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	resp, err := c.http.Do(req)
	*lat = append(*lat, time.Since(t0))
	if err != nil {
		return 0, err
	}
	var reply struct {
		Locks map[string]json.RawMessage `json:"locks"`
	}
	err = json.NewDecoder(resp.Body).Decode(&reply)
	_ = resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || len(reply.Locks) != 1 {
		return 0, fmt.Errorf("PUT /pool/envs/claim = %d, %v", resp.StatusCode, err)
	}
	for member := range reply.Locks {
		if _, err := timed(c, lat, "DELETE", "/lock/"+member, body, 200); err != nil {
			return 0, err
		}
	}
	return 1, nil
}

// ownSet is the parallel workload over sets: each client takes and gives
// back two locks of its own in one request each.
func ownSet(c *client, id int, lat *[]time.Duration) (int, error) {
	body := fmt.Sprintf(`{"locks":["set-%d-a","set-%d-b"],"key":"k%d"}`, id, id, id)
	if _, err := timed(c, lat, "PUT", "/locks", body, 200); err != nil {
		return 0, err
	}
	_, err := timed(c, lat, "DELETE", "/locks", body, 200)
	return 1, err
}
