package stream

// seenIDs is how many of the latest event IDs a Seen remembers: more
// than a node's or a stream's reads ever return again (on PostgreSQL,
// each read also returns the events with lower IDs of transactions that
// were running when the last one seen was written, most of them seen
// before).
const seenIDs = 1 << 14

// Seen remembers the IDs of the latest events handed on (the last
// seenIDs of them), so that each goes out once however often it is
// read, in bounded memory.
type Seen struct {
	ids   map[uint64]struct{}
	order []uint64 // oldest first
	Max   uint64   // the highest ID handed on
}

// Add reports whether id is new, and remembers it.
func (m *Seen) Add(id uint64) bool {
	if _, ok := m.ids[id]; ok {
		return false
	}
	if m.ids == nil {
		m.ids = map[uint64]struct{}{}
	}
	m.ids[id] = struct{}{}
	m.order = append(m.order, id)
	if len(m.order) > seenIDs {
		delete(m.ids, m.order[0])
		m.order = m.order[1:]
	}
	m.Max = max(m.Max, id)
	return true
}
