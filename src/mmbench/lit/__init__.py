"""LightningModules, DataModules and the Trainer factory shared by the protocols."""
