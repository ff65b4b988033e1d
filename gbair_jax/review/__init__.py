"""Human review of a round: proposals, evidence, a local web page, decisions into the ledger."""
