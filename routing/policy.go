package routing

import "math"

// hashString is FNV-1a, 64 bits: no allocation, and stable across processes
// and versions so every instance hashes a user the same way.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix is the splitmix64 finaliser: it spreads the combined user and backend
// hash so that every backend's score is independent.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// rendezvous is weighted highest-random-weight hashing: each open backend
// scores the user, the highest score wins. Adding or removing a backend
// moves only the users that backend wins or loses. With unequal weights the
// score is w / -ln(u), which gives each backend a share proportional to its
// weight. The caller holds p.mu.
func (p *Pool) rendezvous(proto Protocol, user string, exclude []*Backend) *Backend {
	uh := hashString(user)
	equal := p.equalWeights()
	var best *Backend
	var bestScore float64
	var bestHash uint64
	for _, b := range p.backends {
		if !p.open(b, proto) || excluded(b, exclude) {
			continue
		}
		h := mix(uh ^ b.seed)
		if equal {
			if best == nil || h > bestHash {
				best, bestHash = b, h
			}
			continue
		}
		u := (float64(h>>11) + 0.5) / (1 << 53)
		w := float64(b.weight)
		// -ln(u) >= 1-u, so w/(1-u) bounds the score: most backends
		// lose without the logarithm. The margin keeps rounding from
		// ever skipping a winner.
		if best != nil && w/(1-u) < bestScore*(1-1e-9) {
			continue
		}
		score := w / -math.Log(u)
		if best == nil || score > bestScore {
			best, bestScore = b, score
		}
	}
	return best
}

func (p *Pool) equalWeights() bool {
	w := -1
	for _, b := range p.backends {
		if b.weight == 0 {
			continue
		}
		if w >= 0 && b.weight != w {
			return false
		}
		w = b.weight
	}
	return true
}

// roundRobin is nginx's smooth weighted round-robin: with equal weights it
// is a strict rotation, with unequal ones it interleaves instead of sending
// bursts. The caller holds p.mu.
func (p *Pool) roundRobin(proto Protocol, exclude []*Backend) *Backend {
	var best *Backend
	total := 0
	for _, b := range p.backends {
		if !p.open(b, proto) || excluded(b, exclude) {
			continue
		}
		b.curRR[proto] += b.weight
		total += b.weight
		if best == nil || b.curRR[proto] > best.curRR[proto] {
			best = b
		}
	}
	if best != nil {
		best.curRR[proto] -= total
	}
	return best
}

// leastConn picks the open backend with the fewest live sessions per unit
// of weight; ties go round-robin so equal backends fill evenly. The caller
// holds p.mu.
func (p *Pool) leastConn(proto Protocol, exclude []*Backend) *Backend {
	var best *Backend
	for _, b := range p.backends {
		if !p.open(b, proto) || excluded(b, exclude) {
			continue
		}
		if best == nil {
			best = b
			continue
		}
		// b.sessions/b.weight < best.sessions/best.weight, without division.
		l, r := b.sessions.Load()*int64(best.weight), best.sessions.Load()*int64(b.weight)
		if l < r || (l == r && b.curRR[proto] < best.curRR[proto]) {
			best = b
		}
	}
	if best != nil {
		best.curRR[proto]++
	}
	return best
}
