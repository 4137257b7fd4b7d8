// Package nearest finds, for a word a person mistyped, the word they most
// likely meant, for "did you mean ...?" in error messages.
package nearest

// Word returns the candidate closest to word, counting the letters to add,
// remove, change or swap with their neighbour, if it is close enough to
// be what was meant: at most one edit for every three letters of the word
// (rounded up), and at most two. ok is false when no candidate is that
// close; of equally close ones, the first wins.
func Word(word string, candidates []string) (best string, ok bool) {
	limit := min(2, (len(word)+2)/3)
	bestDist := limit + 1
	for _, c := range candidates {
		if d := distance(word, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best, bestDist <= limit
}

// distance is the optimal string alignment distance between a and b: the
// fewest single-byte insertions, deletions, substitutions and swaps of
// adjacent bytes that turn a into b (each byte changed at most once).
func distance(a, b string) int {
	// rows[i][j] is the distance between a[:i] and b[:j]; three rows are kept.
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
