package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// process is a server the benchmark started: the locker, or the noop one.
type process struct {
	cmd  *exec.Cmd
	url  string
	done chan struct{}
}

var listenAddr = regexp.MustCompile(`msg="locker listening" addr=\S*:(\d+)`)

func listenLoopback() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

// start runs bin with args and env and waits until it listens.
func start(bin string, args []string, env []string) (*process, error) {
	cmd := exec.Command(bin, args...) // the benchmark runs the binary it was told to measure
	cmd.Env = env
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	port := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := listenAddr.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case port <- m[1]:
				default:
				}
			}
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	select {
	case pt := <-port:
		p.url = "http://127.0.0.1:" + pt
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("%s exited before listening", bin)
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("%s did not start listening", bin)
	}
}

// kill stops the process with SIGKILL: for the no-op servers.
func (p *process) kill() error {
	_ = p.cmd.Process.Kill()
	<-p.done
	return nil
}

// stop sends SIGTERM and waits for the process to exit.
func (p *process) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return errors.New("server did not stop within 60s")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		return fmt.Errorf("server exited with %d", code)
	}
	return nil
}

// rssMB is the process's resident memory in MB, from /proc.
func (p *process) rssMB() float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// cpuSeconds is the CPU time (user and system) the process has used.
func (p *process) cpuSeconds() float64 { return cpuSecondsOf(p.cmd.Process.Pid) }

// cpuSecondsOf is the CPU time (user and system) process pid has used.
func cpuSecondsOf(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses.
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // clock ticks; 100 a second on Linux
}

// postgresCPU is the CPU time PostgreSQL's processes on this machine have
// used (those alive now): its backends, WAL writer and the rest.
func postgresCPU() float64 {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var sum float64
	for _, d := range dirs {
		comm, err := os.ReadFile(filepath.Join(d, "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(d))
		sum += cpuSecondsOf(pid)
	}
	return sum
}

// machineTicks returns the machine's idle and total clock ticks since boot,
// over every core (/proc/stat's cpu line).
func machineTicks() (idle, total float64) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseFloat(f, 64)
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	return idle, total
}

// startLocker starts the locker binary with a state file in dir.
func startLocker(cfg config, dir string) (*process, string, error) {
	state := filepath.Join(dir, "locks.yml")
	p, err := start(cfg.locker, nil, append([]string{"PORT=0", "LOCKER_CONFIG=" + state}, cfg.serverEnv...))
	return p, state, err
}

// client is one load-generating HTTP client with its own connection.
type client struct {
	http *http.Client
	base string
}

func newClient(base string) *client {
	t := &http.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true}
	return &client{http: &http.Client{Transport: t, Timeout: 60 * time.Second}, base: base}
}

// do sends one request and returns its status.
func (c *client) do(method, path, body string) (int, error) {
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// loadResult is what one throughput run measured.
type loadResult struct {
	requests  int
	grants    int
	latencies []time.Duration
	elapsed   time.Duration
	serverCPU float64 // seconds of CPU the server used (every node)
	clientCPU float64 // seconds of CPU the load generator used
	// For the PostgreSQL runs: seconds of CPU PostgreSQL's processes used,
	// and the share of the machine's time left idle (percent).
	databaseCPU, idle float64
}

func (l loadResult) perSecond(n int) float64 { return float64(n) / l.elapsed.Seconds() }

// loop runs clients goroutines, each calling step until d has passed, and
// collects every request's latency. step returns how many requests it made
// and whether it was granted a lock. Client i talks to bases[i % len].
func loop(bases []string, clients int, d time.Duration, step func(c *client, id int, lat *[]time.Duration) (grants int, err error)) (loadResult, error) {
	var (
		mu     sync.Mutex
		res    loadResult
		wg     sync.WaitGroup
		failed atomic.Value
	)
	cpu0 := cpuSecondsOf(os.Getpid())
	deadline := time.Now().Add(d)
	startAt := time.Now()
	for id := range clients {
		wg.Go(func() {
			c := newClient(bases[id%len(bases)])
			var lat []time.Duration
			grants := 0
			for time.Now().Before(deadline) {
				g, err := step(c, id, &lat)
				if err != nil {
					failed.Store(err)
					break
				}
				grants += g
			}
			mu.Lock()
			res.latencies = append(res.latencies, lat...)
			res.grants += grants
			mu.Unlock()
			c.http.CloseIdleConnections()
		})
	}
	wg.Wait()
	res.elapsed = time.Since(startAt)
	res.clientCPU = cpuSecondsOf(os.Getpid()) - cpu0
	res.requests = len(res.latencies)
	if err, ok := failed.Load().(error); ok {
		return res, err
	}
	return res, nil
}

// timed sends one request, records its latency and checks its status.
func timed(c *client, lat *[]time.Duration, method, path, body string, ok ...int) (int, error) {
	t0 := time.Now()
	status, err := c.do(method, path, body)
	*lat = append(*lat, time.Since(t0))
	if err != nil {
		return 0, err
	}
	for _, s := range ok {
		if status == s {
			return status, nil
		}
	}
	return status, fmt.Errorf("%s %s = %d", method, path, status)
}

// ownLock is the parallel workload: each client takes and gives back a
// lock of its own.
func ownLock(prefix string) func(c *client, id int, lat *[]time.Duration) (int, error) {
	return func(c *client, id int, lat *[]time.Duration) (int, error) {
		path := fmt.Sprintf("/lock/%s-%d", prefix, id)
		body := fmt.Sprintf(`{"key":"k%d"}`, id)
		if _, err := timed(c, lat, "PUT", path, body, 200); err != nil {
			return 0, err
		}
		_, err := timed(c, lat, "DELETE", path, body, 200)
		return 1, err
	}
}

// preload takes n locks through the API with clients at once.
func preload(base string, from, to, clients int) error {
	var wg sync.WaitGroup
	var failed atomic.Value
	next := atomic.Int64{}
	next.Store(int64(from))
	for range clients {
		wg.Go(func() {
			c := newClient(base)
			defer c.http.CloseIdleConnections()
			for {
				i := int(next.Add(1) - 1)
				if i >= to {
					return
				}
				body := fmt.Sprintf(`{"key":"preload-%d","lock_by":"bench-holder-%d","note":"held by the benchmark"}`, i, i)
				if status, err := c.do("PUT", fmt.Sprintf("/lock/preload/%07d", i), body); err != nil || status != 200 {
					failed.Store(fmt.Errorf("preloading lock %d: %d %v", i, status, err))
					return
				}
			}
		})
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		return err
	}
	return nil
}
