package main

import (
	"context"
	"fmt"
	"io"
	"net/url"

	"github.com/spf13/cobra"
)

// newDecideCmd returns the command that approves, rejects or vetoes an action.
func newDecideCmd(getenv func(string) string, verb, done, short, what string) *cobra.Command {
	var comment string
	c := apiCmd(getenv, verb+" ID [--comment TEXT] [flags]", short,
		fmt.Sprintf(`%s (POST /api/actions/ID/%s). You are the token's user: the ledger records your name.
Needs the approver role. ID is an action's ID, as killswitch approvals lists it.`, what, verb),
		wantArgs(1), func(ctx context.Context, f *apiFlags, c *apiClient, pos []string, stdout, stderr io.Writer) int {
			if code, done := c.call(ctx, f, verb, "POST", "/api/actions/"+url.PathEscape(pos[0])+"/"+verb, map[string]string{"comment": comment}, nil, stdout, stderr); done {
				return code
			}
			fmt.Fprintf(stdout, "%s %s\n", done, pos[0])
			return exitOK
		})
	c.Flags().StringVar(&comment, "comment", "", "why, for the ledger")
	return c
}
