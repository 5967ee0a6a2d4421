"""Built-in sampler plugins of cryoinverse; each module registers through the same hooks as a third-party plugin."""
