package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
)

// decideUsage is the usage of approve, reject and veto.
func decideUsage(verb, what string) string {
	return fmt.Sprintf(`usage: killswitch %s ID [--comment TEXT] [flags]

%s (POST /api/actions/ID/%s). You are the token's user: the ledger records your name.
Needs the approver role. ID is an action's ID, as killswitch approvals lists it.`, verb, what, verb)
}

// runDecide returns the command that approves, rejects or vetoes an action.
func runDecide(verb, done, what string) func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
		var comment string
		f, pos, c, code, ok := apiCommand(verb, decideUsage(verb, what), args, 1, stderr, func(fs *flagSet) {
			fs.StringVar(&comment, "comment", "", "why, for the ledger")
		})
		if !ok {
			return code
		}
		var raw []byte
		if err := c.do(ctx, "POST", "/api/actions/"+url.PathEscape(pos[0])+"/"+verb, map[string]string{"comment": comment}, nil, &raw); err != nil {
			return fail(stderr, verb, err)
		}
		if f.asJSON {
			printJSON(stdout, raw)
			return exitOK
		}
		fmt.Fprintf(stdout, "%s %s\n", done, pos[0])
		return exitOK
	}
}
