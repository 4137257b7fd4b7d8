package main

import (
	"fmt"
	"time"
)

// setFigures compare a set of two locks with one lock, at cfg.clients
// clients each on locks of their own, measured in alternation.
type setFigures struct {
	OneRPS figure `json:"one_lock_rps"`
	SetRPS figure `json:"set_of_two_rps"`
}

// benchSets runs the parallel workload on one lock, then on a set of two
// (PUT and DELETE /locks), on a fresh server each, cfg.runs times.
func benchSets(cfg config, dir string, r *report) error {
	var one, set []loadResult
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
	}
	r.Sets = &setFigures{OneRPS: rpsFigure(one), SetRPS: rpsFigure(set)}
	return nil
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
