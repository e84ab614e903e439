package auth_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"mailproxy/protocols"
	"mailproxy/proxy/auth"
	"mailproxy/routing"
)

// An Authenticator in master mode: alice's own password is checked here,
// and the backend is logged in to as the master user on her behalf.
func Example() {
	dir, _ := os.MkdirTemp("", "auth")
	defer os.RemoveAll(dir)
	users := filepath.Join(dir, "users.passwd")
	master := filepath.Join(dir, "master.secret")
	os.WriteFile(users, []byte("# made with: doveadm pw -s SHA512-CRYPT\n"+
		"alice:{SHA512-CRYPT}$6$H5VMapWUIKZBkMX/$ZMox.8RtkIbr0uEu2/6dAte9IuYX5FmLPQN/yESxJS9QZhxIe6SEeqTuixRospWZufi/Qk9YsR7F4.IBhzZ6v/\n"), 0o600)
	os.WriteFile(master, []byte("proxypw\n"), 0o600)

	a, err := auth.New(auth.Options{
		UsersFile:          users,
		Normalize:          func(s string) string { return routing.Key(s, false, "") },
		MasterUser:         "proxy",
		MasterPasswordFile: master,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	back, err := a.Authenticate(ctx, protocols.Credentials{Username: "Alice", Password: "pw"})
	fmt.Printf("%s as %s with password %v, %v\n", back.Username, back.Authzid, back.Password, err)
	_, err = a.Authenticate(ctx, protocols.Credentials{Username: "alice", Password: "guess"})
	fmt.Println(err)
	_, err = a.Authenticate(ctx, protocols.Credentials{Username: "mallory", Password: "guess"})
	fmt.Println(err)
	// Output:
	// proxy as Alice with password REDACTED, <nil>
	// wrong password
	// unknown user
}
