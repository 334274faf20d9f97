"""Models: loading SD-family checkpoints, the tiny debug model, rho and the flow model."""
