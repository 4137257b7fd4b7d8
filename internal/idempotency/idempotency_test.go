package idempotency

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

func TestGetPutAndRetention(t *testing.T) {
	var s Set
	t0 := time.Unix(1_000_000, 0)
	s.Put(Entry{Scope: "PUT /lock/a k1", Fingerprint: "f", At: t0, Outcome: "one"})
	if e, ok := s.Get("PUT /lock/a k1", t0.Add(time.Hour)); !ok || e.Outcome != "one" {
		t.Fatalf("Get = %+v, %v; want the outcome", e, ok)
	}
	if _, ok := s.Get("PUT /lock/b k1", t0); ok {
		t.Error("Get of another scope found an outcome")
	}
	if _, ok := s.Get("PUT /lock/a k1", t0.Add(Retention+time.Second)); ok {
		t.Error("an outcome past Retention was still answered")
	}
	s.Prune(t0.Add(Retention + time.Second))
	if s.Len() != 0 {
		t.Errorf("Len after Retention = %d; want 0", s.Len())
	}
}

func TestDeleteTakesBackOnlyThatEntry(t *testing.T) {
	var s Set
	t0 := time.Unix(1_000_000, 0)
	first := Entry{Scope: "x", Fingerprint: "f1", At: t0}
	s.Put(first)
	s.Put(Entry{Scope: "x", Fingerprint: "f2", At: t0.Add(time.Second)})
	s.Delete(first)
	if e, ok := s.Get("x", t0); !ok || e.Fingerprint != "f2" {
		t.Errorf("Delete of a replaced entry took the newer one too: %+v, %v", e, ok)
	}
}

func TestAtMostMax(t *testing.T) {
	var s Set
	t0 := time.Unix(1_000_000, 0)
	for i := range Max + 10 {
		s.Put(Entry{Scope: fmt.Sprint(i), At: t0})
	}
	if s.Len() != Max {
		t.Errorf("Len = %d; want %d", s.Len(), Max)
	}
	if _, ok := s.Get("0", t0); ok {
		t.Error("the oldest entry was kept beyond Max")
	}
	if _, ok := s.Get(fmt.Sprint(Max+9), t0); !ok {
		t.Error("the newest entry was forgotten")
	}
	if got := len(s.All()); got != Max {
		t.Errorf("All has %d; want %d", got, Max)
	}
}

// BenchmarkMillionKeys puts a million distinct keys, each with a
// 400-byte outcome, and reports the heap after them: it stays at Max
// entries' worth, whatever the number of keys.
func BenchmarkMillionKeys(b *testing.B) {
	outcome := string(make([]byte, 400))
	for b.Loop() {
		var s Set
		t0 := time.Unix(1_000_000, 0)
		var ms runtime.MemStats
		for i := range 1_000_000 {
			s.Put(Entry{Scope: fmt.Sprintf("PUT /lock/l%d %032x", i%1000, i), Fingerprint: "0123456789abcdef0123456789abcdef", At: t0.Add(time.Duration(i) * time.Millisecond), Outcome: string([]byte(outcome))})
			if i == 100_000 || i == 999_999 {
				runtime.GC()
				runtime.ReadMemStats(&ms)
				b.ReportMetric(float64(ms.HeapAlloc)/1e6, fmt.Sprintf("MB-heap-after-%dk-keys", (i+1)/1000))
			}
		}
		if s.Len() != Max {
			b.Fatalf("Len = %d", s.Len())
		}
	}
}
