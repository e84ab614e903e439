package admin

import (
	"mailproxy/proxy/peer"
	"mailproxy/routing"
)

// Status is the answer to GET /status.
type Status struct {
	Node       string           `json:"node"`                  // [peer] node, else the host name
	Role       string           `json:"role"`                  // active | standby; always active without [peer]
	RoleReason string           `json:"role_reason,omitempty"` // why, as the pair's election said
	Peer       *peer.PeerStatus `json:"peer,omitempty"`        // the other instance; nil without [peer]
	Pair       *PairStatus      `json:"pair,omitempty"`        // this instance's side of the pair; nil without [peer]
	Listeners  []ListenerStatus `json:"listeners"`
	Pools      []PoolStatus     `json:"pools"`
}

// PairStatus is what this node of a pair has done: the role in force, its
// addresses and the counters that tell a failover's story.
type PairStatus struct {
	Applied       string   `json:"applied"` // active | standby: the listeners and addresses in force
	VIP           []string `json:"vip,omitempty"`
	Interface     string   `json:"interface,omitempty"`
	LinkUp        bool     `json:"link_up"`
	Announcements uint64   `json:"announcements"`
	Takeovers     uint64   `json:"takeovers"`
	Conflicts     uint64   `json:"conflicts"`
}

// PoolStatus is one pool in Status.
type PoolStatus struct {
	Name     string                  `json:"name"`
	Backends []routing.BackendStatus `json:"backends"`
}

// UserStatus is the answer to GET /users/{user}.
type UserStatus struct {
	User  string     `json:"user"` // the routing key: the login as [auth] normalises it
	Pools []UserPool `json:"pools"`
}

// UserPool is where one pool routes a user.
type UserPool struct {
	Pool string `json:"pool"`
	// Backend is the backend the user is bound to: where the user's sessions
	// are (Live > 0), or where the user lingers after the last one ended.
	// Empty when the user has no binding in this pool.
	Backend  string                `json:"backend,omitempty"`
	Live     int                   `json:"live"`          // live sessions the lease table counts
	Pin      string                `json:"pin,omitempty"` // pin: the config's, or one made through the API
	Sessions []routing.SessionInfo `json:"sessions"`      // the live sessions, by backend and protocol
}

// Result is the answer to POST /pools/{pool}/backends/{backend}/{action}.
type Result struct {
	Pool     string `json:"pool"`
	Backend  string `json:"backend"`
	Action   string `json:"action"`   // drain | undrain | kick | weight
	State    string `json:"state"`    // the backend's state afterwards
	Weight   int    `json:"weight"`   // the backend's weight afterwards
	Sessions int    `json:"sessions"` // live sessions left on it
	Kicked   int    `json:"kicked"`   // sessions closed by kick
}

// errorBody is every error answer: {"error": "..."}.
type errorBody struct {
	Error string `json:"error"`
}

// ListenerStatus describes one configured listener in Status.
type ListenerStatus struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"`
	Address  string `json:"address"` // the bound address while serving, else the configured one
	TLS      string `json:"tls"`
	Pool     string `json:"pool"`
	Serving  bool   `json:"serving"`
}

// WeightChange is the body of POST /pools/{pool}/backends/{backend}/weight.
type WeightChange struct {
	Weight *int `json:"weight"` // >= 0; 0: no new users by hashing
}

// UserChange is the body of POST /users/{user}/pin and /move.
type UserChange struct {
	Pool    string `json:"pool"`
	Backend string `json:"backend"` // pin: "" unpins
}

// UserResult is the answer to POST /users/{user}/pin and /move.
type UserResult struct {
	User    string `json:"user"` // the routing key
	Pool    string `json:"pool"`
	Backend string `json:"backend"`
	Action  string `json:"action"` // pin | move
	Kicked  int    `json:"kicked"` // move: sessions closed on this instance
}
