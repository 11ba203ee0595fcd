package vault

import "testing"

// FuzzOriginal checks that the original policy kept in a quarantine round-trips for any
// text, and that reading arbitrary policies never panics.
func FuzzOriginal(f *testing.F) {
	f.Add("path \"secret/data/vendors/acme/*\" {\n  capabilities = [\"read\"]\n}\n")
	f.Add("")
	f.Add(originalPrefix + "not base64!\n")
	f.Fuzz(func(t *testing.T, text string) {
		_, _ = original(text)
		got, ok := original(quarantined("vendor-x", text))
		if !ok || got != text {
			t.Fatalf("round trip of %q gave %q, %t", text, got, ok)
		}
	})
}
