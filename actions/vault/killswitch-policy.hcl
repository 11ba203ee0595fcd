# The Vault policy the kill switch's own token needs, and nothing more.
#
# It assumes the conventions of the shipped examples: vendor secrets under
# secret/vendors/, vendor policies named vendor-*, database credentials under
# database/creds/. `killswitch vault policy --config killswitch.yaml` prints a
# tighter policy naming exactly the paths of your vendor inventory.
#
# The token should be short-lived and renewable (killswitch renews it), delivered to
# the service through AppRole with a response-wrapped secret-id.

# Know itself: renew its own token, check its own capabilities at start.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "sys/capabilities-self" {
  capabilities = ["update"]
}

# vault.revoke_token_accessor: look up and revoke vendor tokens by accessor.
path "auth/token/lookup-accessor" {
  capabilities = ["update"]
}
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}

# vault.destroy_secret_id: look up and destroy AppRole secret-ids by accessor.
path "auth/approle/role/+/secret-id-accessor/lookup" {
  capabilities = ["update"]
}
path "auth/approle/role/+/secret-id-accessor/destroy" {
  capabilities = ["update"]
}

# vault.revoke_lease: look up and revoke one exact lease.
path "sys/leases/lookup" {
  capabilities = ["update"]
}
path "sys/leases/revoke" {
  capabilities = ["update"]
}

# vault.revoke_lease_prefix: list and revoke the leases under a creds prefix (Vault
# requires sudo for both).
path "sys/leases/lookup/database/creds/*" {
  capabilities = ["list", "sudo"]
}
path "sys/leases/revoke-prefix/database/creds/*" {
  capabilities = ["update", "sudo"]
}

# vault.rotate_kv: read the current version, write a new one (check-and-set), mark it
# in the custom metadata and destroy the old versions.
path "secret/data/vendors/*" {
  capabilities = ["read", "update"]
}
path "secret/metadata/vendors/*" {
  capabilities = ["read", "patch"]
}
path "secret/destroy/vendors/*" {
  capabilities = ["update"]
}

# vault.quarantine_policy: read a vendor policy and replace it by deny-all (restore
# writes the original back).
path "sys/policies/acl/vendor-*" {
  capabilities = ["read", "update"]
}
