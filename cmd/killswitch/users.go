package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/users"
	"github.com/spf13/cobra"
)

const usersHelp = `The HTTP API's users, in DIR/` + users.FileName + ` (DIR: --data-dir, $` + config.EnvDataDir + ` or
./killswitch-data). add prints the new token once, on stdout: only its hash is kept. A
running service re-reads the file on its next request: no restart.

Roles: viewer (incidents, status, metrics), approver (viewer + approve, reject),
admin (approver + pause, resume, breaker reset).`

// usersOptions are the flags of the users commands.
type usersOptions struct {
	dataDir, role  string
	rotate, asJSON bool
}

// newUsersCmd is `killswitch users {add,list,remove}`.
func newUsersCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "users",
		Short: "add, list and remove the HTTP API's users (viewer, approver, admin)",
		Long:  usersHelp,
	}
	sub := func(name, use, short, long string, args cobra.PositionalArgs) (*cobra.Command, *usersOptions) {
		var o usersOptions
		s := &cobra.Command{
			Use: use, Short: short, Long: longHelp(long, usersHelp, "Exit status: 0 done; 1 failed; 2 usage error."), Args: args,
			RunE: exits(func(ctx context.Context, c *cobra.Command, args []string) int {
				return runUsers(ctx, name, &o, args, c.OutOrStdout(), c.ErrOrStderr())
			}),
		}
		s.Flags().StringVar(&o.dataDir, "data-dir", "", "the service's data directory (default: $"+config.EnvDataDir+", else ./killswitch-data)")
		_ = s.MarkFlagDirname("data-dir")
		return s, &o
	}
	add, ao := sub("add", "add NAME --role viewer|approver|admin | add NAME --rotate", "add a user (its token is printed once), or give it a new token",
		`Adds the user NAME with a role and prints its new token once; with --rotate, gives an
existing user a new token (the old one dies).`, wantArgs(1))
	add.Flags().StringVar(&ao.role, "role", "", "viewer, approver or admin")
	add.Flags().BoolVar(&ao.rotate, "rotate", false, "give an existing user a new token")
	completeValues(add, "role", "viewer", "approver", "admin")
	list, lo := sub("list", "list [--json]", "list the users (no secret, not even the hash)",
		`Lists the users: names, roles, token ids and dates.`, wantArgs(0))
	list.Flags().BoolVar(&lo.asJSON, "json", false, "print JSON")
	remove, _ := sub("remove", "remove NAME", "remove a user: its token stops working on the next request",
		`Removes the user NAME (never the last admin).`, wantArgs(1))
	c.AddCommand(add, list, remove)
	return c
}

// runUsers implements `killswitch users add|list|remove`.
func runUsers(ctx context.Context, cmd string, o *usersOptions, pos []string, stdout, stderr io.Writer) int {
	dataDir := &o.dataDir
	if *dataDir == "" {
		*dataDir = os.Getenv(config.EnvDataDir)
	}
	if *dataDir == "" {
		*dataDir = "killswitch-data"
	}
	store := users.Open(users.Path(*dataDir), users.Options{})
	fail := func(err error) int {
		fmt.Fprintf(stderr, "killswitch users %s: %v\n", cmd, err)
		return 1
	}
	switch cmd {
	case "add":
		return usersAdd(ctx, store, pos[0], o.role, o.rotate, stdout, stderr)
	case "list":
		list, err := store.List(ctx)
		if errors.Is(err, users.ErrUnavailable) && errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stderr, "no users file %s (the service creates it on its first start; or add a user)\n", store.Path())
			return 1
		}
		if err != nil {
			return fail(err)
		}
		printUsers(stdout, list, o.asJSON)
		return 0
	default: // remove
		if err := store.Remove(ctx, pos[0]); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stderr, "removed %s: its token stops working on the next request\n", pos[0])
		return 0
	}
}

// usersAdd adds a user, or rotates its token, and prints the token once.
func usersAdd(ctx context.Context, store *users.Store, name, role string, rotate bool, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintln(stderr, "killswitch users add:", err)
		return 1
	}
	var (
		u   users.User
		tok string
		err error
	)
	if rotate {
		if role != "" {
			return fail(errors.New("--rotate keeps the user's role: leave --role out (to change a role, remove and add)"))
		}
		u, tok, err = store.Rotate(ctx, name)
	} else {
		if role == "" {
			fmt.Fprintln(stderr, "killswitch users add: --role is required (viewer, approver or admin)")
			return 2
		}
		r, perr := users.ParseRole(role)
		if perr != nil {
			return fail(perr)
		}
		u, tok, err = store.Add(ctx, name, r)
		if errors.Is(err, users.ErrExists) {
			return fail(fmt.Errorf("%w: %s (add %s --rotate to give it a new token)", users.ErrExists, name, name))
		}
	}
	if err != nil {
		return fail(err)
	}
	fmt.Fprintln(stdout, tok)
	verb := "added"
	if rotate {
		verb = "new token for"
	}
	fmt.Fprintf(stderr, "%s %s (role %s, token id %s) in %s\n"+
		"The token above is shown once; only its hash is kept. Use it as: Authorization: Bearer <token>\n",
		verb, u.Name, u.Role, u.TokenID, store.Path())
	return 0
}

// listedUser is what `users list` shows: nothing secret, not even the hash.
type listedUser struct {
	Name     string     `json:"name"`
	Role     users.Role `json:"role"`
	TokenID  string     `json:"token_id"`
	Created  time.Time  `json:"created"`
	TokenSet time.Time  `json:"token_set"`
}

func printUsers(w io.Writer, list []users.User, asJSON bool) {
	out := make([]listedUser, 0, len(list))
	for _, u := range list {
		out = append(out, listedUser{u.Name, u.Role, u.TokenID, u.Created, u.TokenSet})
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tTOKEN ID\tCREATED\tTOKEN SET")
	for _, u := range out {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", u.Name, u.Role, u.TokenID,
			u.Created.UTC().Format(time.RFC3339), u.TokenSet.UTC().Format(time.RFC3339))
	}
	_ = tw.Flush()
}
