"""Search spaces shipped with difffeat-tune (TOML files; read by difffeat_tune.space.load_space)."""
