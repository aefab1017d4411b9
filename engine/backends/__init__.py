"""One module per backend; each imports its heavy dependency only when it is activated."""
