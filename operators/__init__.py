"""Built-in operator plugins of cryoinverse; each module registers through the same hooks as a third-party plugin."""
