"""Recipe `minitx train-lm` (recipe: LMConfig, run_lm) and `minitx generate` (generate: load_lm, generate_main)."""
