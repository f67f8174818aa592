"""Safe updates of a ContainAI host: facts -> plan -> gate -> apply -> gather again, with a journal."""
