"""Who may do what: code-level rules now, CEL policies and identity next."""
