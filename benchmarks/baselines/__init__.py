"""Hand-written clients to compare against: the docs' sequential recipe and the usual gather script."""
