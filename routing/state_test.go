package routing

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestAdminStateSaveLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	st, err := LoadAdminState(path)
	if err != nil || !st.Updated.IsZero() || st.Pools != nil {
		t.Fatalf("missing file: %+v, %v; want an empty state", st, err)
	}
	want := AdminState{Updated: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
		Pools: map[string]*PoolState{"p": {Drain: map[string]bool{"mail1": true}}}}
	if err := want.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := LoadAdminState(path)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("loaded %+v, %v; want %+v", got, err, want)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".state.json.*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, err := LoadAdminState(path); err == nil {
		t.Error("a corrupt file loaded without error")
	}
}

func TestPoolAdminState(t *testing.T) {
	p, err := NewPool(Options{}, []BackendSpec{{Name: "mail1"}, {Name: "mail2"}, {Name: "mail3"}})
	if err != nil {
		t.Fatal(err)
	}
	p.SetDraining(p.Backend("mail3"), true)
	p.ApplyState(&PoolState{Drain: map[string]bool{"mail2": true, "gone": true, "mail1": false}})
	if got := p.DrainState(); !reflect.DeepEqual(got.Drain, map[string]bool{"mail2": true}) {
		t.Errorf("draining %v, want mail2", got)
	}
	p.ApplyState(nil)
	if got := p.DrainState(); got != nil {
		t.Errorf("draining %v after ApplyState(nil)", got)
	}
}
