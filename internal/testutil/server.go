package testutil

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Server is the locker binary running as its own process on a loopback
// port, for tests that drive the real thing.
type Server struct {
	URL  string // http(s)://127.0.0.1:port
	Log  *SyncBuffer
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

var listenAddr = regexp.MustCompile(`msg="locker listening" addr=(\S+)`)

// StartServer starts the locker binary bin with env (and PORT=0 unless env
// sets PORT) and waits until it serves: over HTTPS when env sets SSL_CERT.
// It is killed when the test ends, if not before.
func StartServer(tb testing.TB, bin string, env ...string) *Server {
	tb.Helper()
	s, err := Start(bin, env...)
	if s != nil {
		tb.Cleanup(s.Kill)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// Start is StartServer for a caller with no test to end it, such as a
// TestMain: it returns why the server did not start, and the caller
// kills it.
func Start(bin string, env ...string) (*Server, error) {
	cmd := exec.Command(bin)
	cmd.Env = append([]string{"PORT=0"}, env...)
	s := &Server{cmd: cmd, Log: &SyncBuffer{}, done: make(chan struct{})}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	port := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			fmt.Fprintln(s.Log, sc.Text())
			if m := listenAddr.FindStringSubmatch(sc.Text()); m != nil {
				_, pt, _ := net.SplitHostPort(m[1])
				select {
				case port <- pt:
				default:
				}
			}
		}
		_ = cmd.Wait()
		close(s.done)
	}()
	scheme := "http"
	for _, e := range env {
		if strings.HasPrefix(e, "SSL_CERT=") {
			scheme = "https"
		}
	}
	select {
	case pt := <-port:
		s.URL = scheme + "://127.0.0.1:" + pt
		return s, nil
	case <-s.done:
		return s, fmt.Errorf("locker exited at start:\n%s", s.Log)
	case <-time.After(time.Minute): // a start on a busy machine took over 20 s, printing nothing
		return s, fmt.Errorf("locker did not start within a minute:\n%s", s.Log)
	}
}

// Kill stops the server with SIGKILL and waits for it to exit.
func (s *Server) Kill() {
	_ = s.cmd.Process.Kill()
	<-s.done
}

// Stop stops the server with SIGTERM, as a service manager does, and
// waits for it to exit.
func (s *Server) Stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	<-s.done
}

// Signal sends sig to the server.
func (s *Server) Signal(sig syscall.Signal) error { return s.cmd.Process.Signal(sig) }

// Done is closed when the server has exited.
func (s *Server) Done() <-chan struct{} { return s.done }

// ExitCode is the server's exit code, once Done is closed.
func (s *Server) ExitCode() int { return s.cmd.ProcessState.ExitCode() }

// Pid is the server's process ID.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// FreePort returns a TCP port on the loopback that was free a moment ago,
// for a server whose port comes from a configuration under test.
func FreePort(tb testing.TB) int {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// GoBuild builds the package pkg into the binary out, with tags, the way
// every test here builds its binaries: static (CGO off) and -trimpath,
// as the Dockerfile and the BOSH package do, so that all these builds
// share one compilation in the build cache.
func GoBuild(out, pkg string, tags ...string) ([]byte, error) {
	args := []string{"build", "-trimpath", "-o", out}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd.CombinedOutput()
}
