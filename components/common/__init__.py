"""What every stage shares: the artifact store, typed configs, distillation records, secrets, logging."""
