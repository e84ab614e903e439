package config

import (
	"fmt"
	"time"

	"github.com/BurntSushi/toml"
)

// StoreConfig is [store]: where the routing state (bindings, drains,
// weights, pins) lives. Absent: memory.
type StoreConfig struct {
	Type           string   `toml:"type"`            // memory (default) | redis
	Address        string   `toml:"address"`         // redis: host:port; default 127.0.0.1:6379
	Addresses      []string `toml:"addresses"`       // extension, redis: several host:port (Sentinels with sentinel_master, else cluster nodes); instead of address
	SentinelMaster string   `toml:"sentinel_master"` // extension, redis: the master's name the Sentinels at addresses watch
	PasswordFile   string   `toml:"password_file"`   // redis AUTH password, white space trimmed; "" = none
	TLS            bool     `toml:"tls"`             // redis: TLS to the store, verified against the system roots
	Prefix         string   `toml:"prefix"`          // key prefix; default "mailproxy:"
	Instance       string   `toml:"instance"`        // this instance's name in the store; default the host name
	LeaseTTL       Duration `toml:"lease_ttl"`       // default 10s; >= 1s: an instance that stops refreshing frees its users after this
	OnStoreLoss    string   `toml:"on_store_loss"`   // hash (default): cached bindings, else the hash | refuse: no new logins of users
	StateFile      string   `toml:"state_file"`      // memory: runtime drains, weights, pins persist here; "" = not at all
}

// Addrs returns the store's addresses: addresses, else address.
func (s *StoreConfig) Addrs() []string {
	if len(s.Addresses) > 0 {
		return s.Addresses
	}
	return []string{s.Address}
}

func (c *Config) storeDefaults(md *toml.MetaData) {
	if c.Store == nil {
		c.Store = &StoreConfig{}
	}
	s := c.Store
	defStr(&s.Type, "memory", md.IsDefined("store", "type"))
	defStr(&s.Address, "127.0.0.1:6379", md.IsDefined("store", "address"))
	defStr(&s.Prefix, "mailproxy:", md.IsDefined("store", "prefix"))
	defStr(&s.OnStoreLoss, "hash", md.IsDefined("store", "on_store_loss"))
	defDur(&s.LeaseTTL, 10*time.Second, md.IsDefined("store", "lease_ttl"))
}

func (c *Config) checkStore(ck *cfgChecker) {
	s := c.Store
	if s == nil {
		return
	}
	ck.oneOf("store.type", s.Type, "memory", "redis")
	ck.oneOf("store.on_store_loss", s.OnStoreLoss, "hash", "refuse")
	if s.LeaseTTL.Duration < time.Second {
		ck.add("store.lease_ttl", "%v is shorter than 1s", s.LeaseTTL.Duration)
	}
	if s.Type != "redis" {
		return
	}
	if s.StateFile != "" {
		ck.add("store.state_file", "only for type memory: redis keeps the state itself")
	}
	if len(s.Addresses) == 0 {
		ck.addr("store.address", s.Address, true)
	}
	for i, a := range s.Addresses {
		ck.addr(fmt.Sprintf("store.addresses[%d]", i), a, true)
	}
	if s.SentinelMaster != "" && len(s.Addresses) == 0 {
		ck.add("store.sentinel_master", "needs store.addresses: the Sentinels")
	}
}
