"""Model organisms: small models with known behaviours, trained here, shipped as HF folders."""
