package config

import "github.com/BurntSushi/toml"

// StoreConfig is [store]: where the routing state lives. Absent: memory.
// Only the memory store is built here; with it, state_file keeps the
// runtime admin state (drains) across restarts.
type StoreConfig struct {
	Type      string `toml:"type"`       // memory (default)
	StateFile string `toml:"state_file"` // memory: runtime drains persist here; "" = not at all
}

func (c *Config) storeDefaults(md *toml.MetaData) {
	if c.Store == nil {
		c.Store = &StoreConfig{}
	}
	defStr(&c.Store.Type, "memory", md.IsDefined("store", "type"))
}

func (c *Config) checkStore(ck *cfgChecker) {
	if s := c.Store; s != nil && s.Type != "memory" {
		ck.add("store.type", "must be \"memory\", not %q", s.Type)
	}
}
