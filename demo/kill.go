package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch/internal/devvault"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/replay"
)

// partnerName is the vendor the second act cuts off as a whole.
const partnerName = "partner"

// ErrNotKilled is returned when the second act's vendor was not cut off, or not restored.
var ErrNotKilled = fmt.Errorf("%w: the whole-vendor cut-off or its restore did not verify", ErrNotContained)

// actKill is the second act: a vendor holding tokens of its identity entity (some no
// inventory lists), AppRole secret-ids and KV secrets is cut off in one plan through
// the API, proven dead from the vendor's side, then restored as a false positive.
func actKill(ctx context.Context, p *printer, vs *vaultSetup, apiURL, token string) error {
	api := apiCaller{base: apiURL, token: token}
	partner := vs.partner
	p.step("Act 2: %s is breached as a whole. It holds %d tokens of its identity entity (only 1 in the inventory), %d AppRole secret-ids and %d KV secrets",
		partnerName, len(partner.Tokens), len(partner.SecretIDs), len(partner.KV))
	var plan pipeline.KillPlan
	if err := api.do(ctx, "GET", "/api/vendors/"+partnerName+"/kill-plan", nil, &plan); err != nil {
		return err
	}
	p.line("The plan, shown before anything runs (%d actions, %d found in Vault beyond the inventory, planned in %s):",
		len(plan.Steps), plan.Enumerated, replay.FormatSeconds(plan.PlanSeconds))
	for _, s := range plan.Steps {
		what := s.Target
		if s.Plan != nil {
			what = s.Plan.Summary
		}
		p.line("  %-32s %-28s %s", s.Credential, s.Type, firstLine(what))
	}
	var o struct {
		pipeline.KillOrder
		Error string `json:"error"`
	}
	if err := api.do(ctx, "POST", "/api/vendors/"+partnerName+"/kill", map[string]string{"reason": "partner breached: demo"}, &o); err != nil {
		return err
	}
	if o.State != pipeline.KillDone {
		return fmt.Errorf("%w: kill order %s is %s: %s", ErrNotKilled, o.ID, o.State, o.Error)
	}
	p.step("KILL  %s cut off: %d actions applied and verified in %s, one incident (%s), exposure window %s",
		partnerName, len(o.Actions), replay.FormatSeconds(o.ApplySeconds), o.Incident, replay.FormatSeconds(*o.ExposureWindowSeconds))
	dead := 0
	for _, t := range partner.Tokens {
		if tokenWorks(ctx, vs, t.Token) != nil {
			dead++
		}
	}
	logins := 0
	for _, s := range partner.SecretIDs {
		if loginWorks(ctx, vs, partner, s.SecretID) != nil {
			logins++
		}
	}
	if dead != len(partner.Tokens) || logins != len(partner.SecretIDs) {
		return fmt.Errorf("%w: %d of %d tokens denied, %d of %d secret-ids refused", ErrNotKilled, dead, len(partner.Tokens), logins, len(partner.SecretIDs))
	}
	p.line("Proof from the vendor's side: all %d tokens denied (the 2 nobody listed too: their entity is disabled), all %d secret-ids refused",
		dead, logins)

	var res struct {
		Restoration pipeline.Restoration `json:"restoration"`
		Error       string               `json:"error"`
	}
	if err := api.do(ctx, "POST", "/api/incidents/"+o.Incident+"/restore", map[string]string{"reason": "false positive: demo"}, &res); err != nil {
		return err
	}
	n := res.Restoration.Note
	if !n.Complete {
		return fmt.Errorf("%w: restore incomplete: %s", ErrNotKilled, res.Error)
	}
	p.step("RESTORE  %s restored in %s after a false positive (time to restore: %s cut off):", partnerName, replay.FormatSeconds(n.TookSeconds), replay.FormatSeconds(n.TimeToRestoreSeconds))
	for _, s := range n.Steps {
		p.line("  %-32s %-11s %s", s.Credential, s.Outcome, firstLine(s.Evidence))
	}
	var wrapped string
	for cred, w := range res.Restoration.Wrapped {
		if strings.HasPrefix(cred, "approle:") {
			wrapped = w.Token
		}
	}
	root := vs.root()
	un, err := root.Logical().UnwrapWithContext(ctx, wrapped)
	if err != nil || un == nil {
		return fmt.Errorf("%w: unwrap the new secret-id: %v", ErrNotKilled, err)
	}
	if err := loginWorks(ctx, vs, partner, un.Data["secret_id"].(string)); err != nil {
		return fmt.Errorf("%w: the new secret-id does not log in: %v", ErrNotKilled, err)
	}
	working := 0
	for _, t := range partner.Tokens {
		if tokenWorks(ctx, vs, t.Token) == nil {
			working++
		}
	}
	p.line("The vendor unwraps its new secret-id once and logs in; %d of its %d tokens work again (the revoked one stays dead)", working, len(partner.Tokens))
	return nil
}

// apiCaller calls the service's API as the demo's admin.
type apiCaller struct{ base, token string }

func (a apiCaller) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("demo: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("demo: %s %s: %d %s", method, path, resp.StatusCode, firstLine(string(b)))
	}
	return json.Unmarshal(b, out)
}

// tokenWorks looks the token itself up: nil when Vault accepts it.
func tokenWorks(ctx context.Context, vs *vaultSetup, token string) error {
	c, err := api.NewClient(&api.Config{Address: vs.vp.Addr(), Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	c.SetToken(token)
	_, err = c.Auth().Token().LookupSelfWithContext(ctx)
	return err
}

// loginWorks logs in with the vendor's role-id and secretID: nil when it works.
func loginWorks(ctx context.Context, vs *vaultSetup, v *devvault.Seeded, secretID string) error {
	c, err := api.NewClient(&api.Config{Address: vs.vp.Addr(), Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	c.SetToken("")
	_, err = c.Logical().WriteWithContext(ctx, "auth/approle/login", map[string]any{"role_id": v.RoleID, "secret_id": secretID})
	return err
}
