package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPlantedBugsStillApply checks that each planted bug of scripts/bugs
// still applies to the tree: make calibrate proves the linearizability
// tests catch each one (and builds it), and a patch that no longer
// applies would prove nothing. (Building six copies of the tree here
// would cost a fresh machine minutes of its two cores.)
func TestPlantedBugsStillApply(t *testing.T) {
	patches, err := filepath.Glob("scripts/bugs/*.patch")
	if err != nil || len(patches) == 0 {
		t.Fatalf("no planted bugs in scripts/bugs (%v)", err)
	}
	for _, patch := range patches {
		t.Run(strings.TrimSuffix(filepath.Base(patch), ".patch"), func(t *testing.T) {
			if out, err := exec.Command("git", "apply", "--check", patch).CombinedOutput(); err != nil {
				t.Fatalf("%s no longer applies: %v\n%s", patch, err, out)
			}
		})
	}
}
