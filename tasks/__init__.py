"""SeqIO task registrations: `import tasks` registers every gbair_jax task by name."""
