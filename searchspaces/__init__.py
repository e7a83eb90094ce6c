"""Search spaces shipped with difffeat-tune (TOML files; see difffeat_tune.search.space)."""
