package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPlantedBugsStillApply applies each planted bug of scripts/bugs to a
// copy of the tree and builds it: make calibrate proves the
// linearizability tests catch each one, and a patch that no longer applies
// or builds would prove nothing.
func TestPlantedBugsStillApply(t *testing.T) {
	t.Parallel() // mostly waits
	patches, err := filepath.Glob("scripts/bugs/*.patch")
	if err != nil || len(patches) == 0 {
		t.Fatalf("no planted bugs in scripts/bugs (%v)", err)
	}
	for _, patch := range patches {
		t.Run(strings.TrimSuffix(filepath.Base(patch), ".patch"), func(t *testing.T) {
			t.Parallel()
			tree := t.TempDir()
			copyTree := exec.Command("sh", "-c", `tar --exclude=./.git --exclude=./bin -cf - . | tar -xf - -C "$0"`, tree)
			if out, err := copyTree.CombinedOutput(); err != nil {
				t.Fatalf("copying the tree: %v\n%s", err, out)
			}
			abs, _ := filepath.Abs(patch)
			apply := exec.Command("git", "apply", abs)
			apply.Dir = tree
			if out, err := apply.CombinedOutput(); err != nil {
				t.Fatalf("%s no longer applies: %v\n%s", patch, err, out)
			}
			build := exec.Command("go", "build", "-o", os.DevNull, ".")
			build.Dir = tree
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("the tree with %s does not build: %v\n%s", patch, err, out)
			}
		})
	}
}
